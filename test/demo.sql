-- The main job on the built-in default: a real ImageNet-pretrained MobileNetV2
-- scores and embeds real images from inside PostgreSQL.
-- Run by `sudo test/run demo` (psql -v shared=/path/to/shared -f test/demo.sql).
\set ON_ERROR_STOP 1
\set QUIET on
\pset footer off
\timing off
CREATE EXTENSION IF NOT EXISTS medtl;
SET search_path = public, medtl;

\echo
\echo '== What the engine runs on'
SELECT key, value FROM jsonb_each_text(runtime_info())
 WHERE key IN ('blas_core', 'blas_core_choice', 'threads', 'cpu_features', 'device');

\echo
\echo '== Register the pretrained backbone: safetensors bytes become rows'
\set mdir :shared '/models/mobilenet_v2_imagenet/'
SELECT import_model_file(
         'mobilenet_v2_imagenet', 'mobilenet_v2', :'mdir' || 'mobilenet_v2_imagenet.safetensors',
         labels  => string_to_array(rtrim(convert_from(read_server_file(:'mdir' || 'labels.txt'), 'UTF8'), E'\n'), E'\n'),
         padding => 'tf_same',      -- trained with TensorFlow "SAME" padding (see its README)
         replace => true) AS model_id;
SELECT model_id, name, arch, num_classes, input_size, mean, std, padding, left(sha256, 16) AS sha256
  FROM models;
SELECT count(*) AS tensors, pg_size_pretty(sum(octet_length(data))) AS size
  FROM weights JOIN models USING (model_id) WHERE name = 'mobilenet_v2_imagenet';

\echo
\echo '== Three photographs: top-3 labels with probabilities'
CREATE TEMP TABLE photos AS
SELECT n AS name, read_server_file(:'mdir' || 'samples/' || n) AS image
  FROM unnest(ARRAY['bird.png', 'cat.png', 'grace_hopper.png']) n;
SELECT p.name, (image_info(p.image)).width || 'x' || (image_info(p.image)).height AS size,
       t.rank, t.label, round(t.probability::numeric, 3) AS probability
  FROM photos p, predict_topk('mobilenet_v2_imagenet', p.image, 3) t
 ORDER BY p.name, t.rank;

\echo
\echo '== Chest X-rays (Kermany et al., CC BY 4.0) as rows: the public train/test split'
\set chest :shared '/data/chest_xray/'
CREATE TEMP TABLE manifest (path text, label text, split text, patient text, subtype text);
\set manifest :chest 'manifest.csv'
COPY manifest FROM :'manifest' WITH (FORMAT csv, HEADER);
CREATE TEMP TABLE xrays AS
SELECT path, label, split, patient, nullif(subtype, '') AS subtype,
       read_server_file(:'chest' || path) AS image
  FROM manifest;
SELECT split, label, count(*) AS images, count(DISTINCT patient) AS patients
  FROM xrays GROUP BY 1, 2 ORDER BY 1, 2;

\echo
\echo '== A pneumonia classifier derived from the backbone: same features, a fresh seeded head'
SELECT create_model('pneumonia', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], replace => true) AS model_id;

\echo
\echo '== Train the head on the 5,216 training rows: the frozen backbone''s features are computed'
\echo '   once, then 10 epochs; 10% of the patients are held out for validation (NOTICE per epoch)'
\timing on
SELECT train('pneumonia', 'SELECT image, label, patient FROM xrays WHERE split = ''train''',
             group_column => 'patient', class_weights => 'balanced') AS run_id \gset
\timing off
SELECT run_id, status, n_train, n_val, round(seconds::numeric, 1) AS seconds,
       resolved->>'optimizer' AS optimizer, resolved->>'lr' AS lr, resolved->>'freeze' AS freeze
  FROM runs WHERE run_id = :run_id;
SELECT epoch, round(lr::numeric, 6) AS lr, round(train_loss::numeric, 4) AS train_loss,
       round(train_accuracy::numeric, 3) AS train_acc, round(val_loss::numeric, 4) AS val_loss,
       round(val_accuracy::numeric, 3) AS val_acc, round(val_auc::numeric, 4) AS val_auc
  FROM epochs WHERE run_id = :run_id ORDER BY phase, epoch;

\echo
\echo '== Evaluate on the untouched 624-image test split: the metrics are rows'
\timing on
SELECT evaluate('pneumonia', 'SELECT image, label FROM xrays WHERE split = ''test''') AS eval_id \gset
\timing off
SELECT n, positive_label, round(accuracy::numeric, 4) AS accuracy, round(auc::numeric, 4) AS auc,
       round(f1::numeric, 4) AS f1, round(recall::numeric, 4) AS sensitivity,
       round(specificity::numeric, 4) AS specificity, round(balanced_accuracy::numeric, 4) AS balanced_acc,
       round(log_loss::numeric, 4) AS log_loss
  FROM evaluations WHERE evaluation_id = :eval_id;
SELECT truth, predicted, n FROM confusion WHERE evaluation_id = :eval_id ORDER BY truth, predicted;
SELECT class, support, round(precision::numeric, 4) AS precision, round(recall::numeric, 4) AS recall,
       round(f1::numeric, 4) AS f1 FROM class_metrics WHERE evaluation_id = :eval_id ORDER BY class_index;
\echo 'Published for this test set (Kermany et al. 2018: full-resolution images, full fine-tuning):'
\echo 'accuracy 0.928, sensitivity 0.932, specificity 0.901; not directly comparable (../shared/data/README.md).'
\echo 'This demo trains only the head; medtl.fine_tune() also trains the backbone, at a higher cost.'

\echo
\echo '== Scores in any query; AUC as an aggregate by group (pneumonia subtype vs all normals)'
CREATE TEMP TABLE scored AS
SELECT label, subtype, (predict_proba('pneumonia', image))[2]::float8 AS p_pneumonia
  FROM xrays WHERE split = 'test';
SELECT s.subtype, count(*) AS images,
       round(auc(x.p_pneumonia, x.label = 'pneumonia')::numeric, 4) AS auc_vs_normal
  FROM (SELECT DISTINCT subtype FROM scored WHERE subtype IS NOT NULL) s
  JOIN scored x ON x.subtype = s.subtype OR x.label = 'normal'
 GROUP BY s.subtype ORDER BY s.subtype;

\echo
\echo '== Embeddings for similarity search (pooled features; cast to a pgvector vector if installed)'
SELECT path, label, cardinality(embed('pneumonia', image)) AS dim
  FROM xrays WHERE split = 'test' ORDER BY path LIMIT 3;
