-- export: a model leaves as safetensors bytes and comes back unchanged
SET search_path = public, medtl;
SELECT octet_length(export_model('pneumonia')) BETWEEN 9000000 AND 9200000 AS sized_like_mobilenet_v2;
SELECT i->'tensors' AS tensors, i->'num_classes' AS num_classes,
       i->'metadata'->>'arch' AS arch, i->'metadata'->>'labels' AS labels,
       i->'metadata'->>'padding' AS padding, i->'metadata'->>'input_size' AS input_size,
       i->'metadata'->>'mean' AS mean
  FROM (SELECT safetensors_info(export_model('pneumonia'), 'mobilenet_v2') AS i) s;
-- re-import: labels, padding, mean/std come from the metadata
SELECT import_model('pneumonia_copy', 'mobilenet_v2', export_model('pneumonia')) > 0 AS imported;
SELECT a.labels = b.labels AS same_labels, a.padding = b.padding AS same_padding,
       a.mean = b.mean AND a.std = b.std AS same_norm, a.input_size = b.input_size AS same_size
  FROM models a, models b WHERE a.name = 'pneumonia' AND b.name = 'pneumonia_copy';
SELECT count(*) AS tensors, bool_and(a.data = b.data) AS identical
  FROM weights a JOIN weights b USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia_copy')
   AND a.dtype = 'F32';
SELECT bool_and(predict_proba('pneumonia', image) = predict_proba('pneumonia_copy', image)) AS same_probabilities
  FROM xrays;
-- the same rules as scoring: an invisible or unknown model cannot be exported
\set VERBOSITY terse
SELECT export_model('no_such_model');
\set VERBOSITY default
SELECT drop_model('pneumonia_copy');
