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
\echo '== Chest X-rays (Kermany et al., CC BY 4.0) as rows: 150 train + 60 test per class'
\set chest :shared '/data/chest_xray/'
CREATE TEMP TABLE manifest (path text, label text, split text, patient text, subtype text);
\set manifest :chest 'manifest.csv'
COPY manifest FROM :'manifest' WITH (FORMAT csv, HEADER);
CREATE TEMP TABLE xrays AS
SELECT path, label, split, read_server_file(:'chest' || path) AS image
  FROM (SELECT m.*, row_number() OVER (PARTITION BY split, label ORDER BY md5(path)) AS k
          FROM manifest m) s
 WHERE (split = 'train' AND k <= 150) OR (split = 'test' AND k <= 60);
SELECT split, label, count(*) FROM xrays GROUP BY 1, 2 ORDER BY 1, 2;

\echo
\echo '== What an ImageNet model says about X-rays (not a diagnosis: the labels are ImageNet''s)'
SELECT truth, imagenet_label, n AS images
  FROM (SELECT label AS truth, predict('mobilenet_v2_imagenet', image) AS imagenet_label, count(*) AS n,
               row_number() OVER (PARTITION BY label ORDER BY count(*) DESC, predict('mobilenet_v2_imagenet', image)) AS r
          FROM xrays WHERE split = 'test' GROUP BY 1, 2) t
 WHERE r <= 3 ORDER BY truth, n DESC;

\echo
\echo '== Embeddings: 1280 pooled features per image, stored as rows'
\timing on
CREATE TEMP TABLE emb AS
SELECT path, label, split, embed('mobilenet_v2_imagenet', image) AS v FROM xrays;
\timing off
SELECT split, label, count(*), cardinality(min(v)) AS dim,
       round(avg(sqrt((SELECT sum(x * x) FROM unnest(v) x)))::numeric, 2) AS mean_norm
  FROM emb GROUP BY 1, 2 ORDER BY 1, 2;

\echo
\echo '== Transfer learning in plain SQL: 5-nearest-neighbour vote on the frozen features'
WITH n AS (SELECT path, label, split, v,
                  sqrt((SELECT sum(x * x) FROM unnest(v) x)) AS norm FROM emb),
sims AS (
    SELECT q.path, q.label AS truth, r.label,
           (SELECT sum(a * b) FROM unnest(q.v, r.v) u(a, b)) / (q.norm * r.norm) AS cos
      FROM n q JOIN n r ON q.split = 'test' AND r.split = 'train'),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY path ORDER BY cos DESC) AS k FROM sims),
votes AS (
    SELECT path, truth, mode() WITHIN GROUP (ORDER BY label) AS predicted
      FROM ranked WHERE k <= 5 GROUP BY path, truth)
SELECT count(*) AS test_images,
       round(avg((predicted = truth)::int)::numeric, 3) AS accuracy,
       count(*) FILTER (WHERE truth = 'pneumonia' AND predicted = 'pneumonia') AS true_pos,
       count(*) FILTER (WHERE truth = 'normal' AND predicted = 'pneumonia') AS false_pos,
       count(*) FILTER (WHERE truth = 'normal' AND predicted = 'normal') AS true_neg,
       count(*) FILTER (WHERE truth = 'pneumonia' AND predicted = 'normal') AS false_neg
  FROM votes;
\echo 'Fine-tuning (medtl.train) is the next step; see the README.'
