-- predict: the pretrained MobileNetV2 scores real images in plain SELECTs
SET search_path = public, medtl;

-- the network inputs (224x224): top-1 and the shipped reference logits
SELECT name, predict('mobilenet_v2_imagenet', image) AS label
  FROM samples WHERE name LIKE '%\_224.png' ORDER BY name;
WITH l AS MATERIALIZED (
    SELECT name, logits('mobilenet_v2_imagenet', image) AS lg
      FROM samples WHERE name LIKE '%\_224.png')
SELECT l.name, count(*) AS logits,
       max(abs(l.lg[e.class_index + 1] - e.logit)) < 1e-3 AS within_1e3,
       max(abs(l.lg[e.class_index + 1] - e.logit)) < 1e-4 AS within_1e4
  FROM l JOIN expected_logits e ON e.image = l.name AND e.padding = 'tf_same'
 GROUP BY l.name ORDER BY l.name;
-- the symmetric-padding twin matches torchvision's own module
WITH l AS MATERIALIZED (
    SELECT name, logits('mobilenet_v2_symmetric', image) AS lg
      FROM samples WHERE name LIKE '%\_224.png')
SELECT l.name, max(abs(l.lg[e.class_index + 1] - e.logit)) < 1e-3 AS within_1e3
  FROM l JOIN expected_logits e ON e.image = l.name AND e.padding = 'torch_symmetric'
 GROUP BY l.name ORDER BY l.name;

-- top-5 with probabilities (reference: chickadee .981, Egyptian cat .778, military uniform .927)
SELECT name, t.rank, t.class_index, t.label, round(t.probability::numeric, 3) AS p
  FROM samples, predict_topk('mobilenet_v2_imagenet', image, 3) t
 WHERE name LIKE '%\_224.png' ORDER BY name, t.rank;

-- original sizes go through medtl's own resize
SELECT name, predict('mobilenet_v2_imagenet', image) AS label,
       round((predict_proba('mobilenet_v2_imagenet', image))[1 + 19]::numeric, 2) AS p_chickadee
  FROM samples WHERE name NOT LIKE '%\_224.png' ORDER BY name;

-- probabilities sum to one; embeddings are 1280 pooled features
SELECT name, cardinality(p) AS n, round(s::numeric, 4) AS sum
  FROM (SELECT name, predict_proba('mobilenet_v2_imagenet', image) AS p FROM samples) x,
       LATERAL (SELECT sum(v) AS s FROM unnest(p) v) y ORDER BY name;
SELECT name, cardinality(e) AS dim, (SELECT min(v) >= 0 FROM unnest(e) v) AS relu6_nonneg
  FROM (SELECT name, embed('mobilenet_v2_imagenet', image) AS e FROM samples) x ORDER BY name;
-- similar images have similar embeddings: the bird at two sizes vs the cat
WITH e AS (SELECT name, embed('mobilenet_v2_imagenet', image) AS v FROM samples),
cos AS (
    SELECT a.name AS a, b.name AS b,
           (SELECT sum(x * y) FROM unnest(a.v, b.v) u(x, y)) /
           sqrt((SELECT sum(x * x) FROM unnest(a.v) x) * (SELECT sum(y * y) FROM unnest(b.v) y)) AS c
      FROM e a, e b WHERE a.name = 'bird.png' AND b.name IN ('bird_224.png', 'cat.png'))
SELECT (SELECT c FROM cos WHERE b = 'bird_224.png') > (SELECT c FROM cos WHERE b = 'cat.png') AS bird_closer;

-- in any query: chest X-rays through an ImageNet model (not a diagnosis)
SELECT count(*) AS scored, count(DISTINCT predict('mobilenet_v2_imagenet', image)) > 0 AS labelled
  FROM xrays;

-- many images at once: predict_batch gives the same answers as row-by-row scoring
WITH b AS (
    SELECT t.ord, t.label, t.probabilities
      FROM predict_batch('mobilenet_v2_imagenet',
                         ARRAY(SELECT image FROM xrays ORDER BY path) || ARRAY[NULL::bytea], 5) t),
r AS (
    SELECT row_number() OVER (ORDER BY path) AS ord, predict('mobilenet_v2_imagenet', image) AS label,
           predict_proba('mobilenet_v2_imagenet', image) AS p
      FROM xrays)
SELECT count(*) AS rows, count(b.label) AS scored,
       bool_and(b.label = r.label) AS same_labels,
       max((SELECT max(abs(x - y)) FROM unnest(b.probabilities, r.p) u(x, y))) < 1e-5 AS same_probabilities
  FROM b LEFT JOIN r USING (ord);
SELECT ord, label FROM predict_batch('mobilenet_v2_imagenet',
    ARRAY(SELECT image FROM samples WHERE name LIKE '%\_224.png' ORDER BY name)) ORDER BY ord;
SELECT * FROM predict_batch('mobilenet_v2_imagenet', ARRAY(SELECT image FROM samples LIMIT 1), 0);
SELECT * FROM predict_batch('mobilenet_v2_imagenet', ARRAY[(SELECT image FROM samples LIMIT 1), '\x00'::bytea]);
SELECT count(*) AS empty FROM predict_batch('mobilenet_v2_imagenet', '{}'::bytea[]);

-- the functions are strict and parallel safe
SELECT predict('mobilenet_v2_imagenet', NULL) IS NULL AS null_image;
SELECT proname, proparallel, provolatile, proisstrict FROM pg_proc
 WHERE pronamespace = 'medtl'::regnamespace
   AND proname IN ('predict', 'predict_proba', 'logits', 'embed') ORDER BY proname;

-- a parallel plan scores in workers
SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT label, predict('mobilenet_v2_imagenet', image) IS NOT NULL AS ok, count(*)
  FROM xrays GROUP BY 1, 2 ORDER BY 1;
SELECT label, predict('mobilenet_v2_imagenet', image) IS NOT NULL AS ok, count(*)
  FROM xrays GROUP BY 1, 2 ORDER BY 1;
RESET parallel_setup_cost; RESET parallel_tuple_cost; RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;

-- the per-backend cache notices changed weights: zero the head's bias
-- and push one class up, and the prediction follows
SELECT (runtime_info()->>'models_cached')::int > 0 AS cached;
UPDATE medtl.weights w SET data = overlay(data placing '\x0000c842'::bytea from 1 + 4 * 400)
  FROM medtl.models m
 WHERE w.model_id = m.model_id AND m.name = 'mobilenet_v2_symmetric' AND w.tensor = 'classifier.1.bias';
SELECT predict('mobilenet_v2_symmetric', image) AS after_bias_change FROM samples WHERE name = 'bird_224.png';
-- changing the model row (its labels) is seen too
UPDATE medtl.models SET labels[401] = 'edited label' WHERE name = 'mobilenet_v2_symmetric';
SELECT predict('mobilenet_v2_symmetric', image) AS after_label_change FROM samples WHERE name = 'bird_224.png';
-- a rolled-back change leaves the committed model in force
BEGIN;
DELETE FROM medtl.weights w USING medtl.models m
 WHERE w.model_id = m.model_id AND m.name = 'mobilenet_v2_symmetric' AND w.tensor = 'classifier.1.bias';
SELECT predict('mobilenet_v2_symmetric', image) FROM samples WHERE name = 'bird_224.png';
ROLLBACK;
SELECT predict('mobilenet_v2_symmetric', image) AS after_rollback FROM samples WHERE name = 'bird_224.png';
-- threads are a GUC
SET medtl.threads = 1;
SELECT (runtime_info()->>'threads')::int AS threads, predict('mobilenet_v2_imagenet', image) AS label
  FROM samples WHERE name = 'cat_224.png';
RESET medtl.threads;
-- with medtl.threads = 0 (the default) scoring picks its thread count by
-- timing its calls (cores, cores / 2, ..., 1: core/adapt.c, test_adapt);
-- the count never changes a result (test_threads checks every architecture)
SET medtl.threads = 1;
CREATE TEMP TABLE lg_one AS SELECT name, logits('mobilenet_v2_imagenet', image) AS lg FROM samples;
SELECT runtime_info()->>'scoring_threads_mode' AS mode, (runtime_info()->>'last_scoring_threads')::int AS last;
RESET medtl.threads;
SELECT runtime_info()->>'scoring_threads_mode' AS mode;
SELECT count(*) AS logits, bool_and(a = b) AS same_bits
  FROM (SELECT unnest(l.lg) AS a, unnest(logits('mobilenet_v2_imagenet', s.image)) AS b
          FROM samples s JOIN lg_one l USING (name)) x;
-- enough calls (over 0.125 s) that it tries another count, where there is one
SELECT count(*) AS scored
  FROM samples s, generate_series(1, 40) g WHERE logits('mobilenet_v2_imagenet', s.image) IS NOT NULL;
SELECT (runtime_info()->>'last_scoring_threads')::int BETWEEN 1 AND (runtime_info()->>'cpu_cores')::int AS in_range,
       (runtime_info()->>'scoring_thread_probes')::int > 0 OR (runtime_info()->>'cpu_cores')::int = 1 AS probed;
-- convolution kernels are a GUC: oneDNN (auto, where libdnnl.so.2 loads)
-- and im2col + GEMM give the same logits (scoring with oneDNN frees the
-- cached model's raw convolution weights; GEMM reads them back from
-- medtl.weights)
CREATE TEMP TABLE lg_auto AS SELECT name, logits('mobilenet_v2_imagenet', image) AS lg FROM samples;
SELECT runtime_info()->>'conv_kernels' ~ '^(oneDNN [0-9]|oneDNN not found|built without oneDNN)' AS reported;
SET medtl.conv_kernels = gemm;
SELECT runtime_info()->>'conv_kernels' LIKE 'off (medtl.conv_kernels%' AS gemm_in_use;
SELECT count(*) AS logits, max(abs(a - g)) < 1e-3 AS agree
  FROM (SELECT unnest(l.lg) AS a, unnest(logits('mobilenet_v2_imagenet', s.image)) AS g
          FROM samples s JOIN lg_auto l USING (name)) x;
RESET medtl.conv_kernels;
-- medtl.conv_kernels = winograd (opt-in): batches of two or more run the dense
-- 3x3 stride-1 convolutions through oneDNN's Winograd kernel (where oneDNN
-- has one: AVX-512); a ResNet-18 scores a batch within a few 1e-4 of the
-- direct kernels (test_engine checks each convolution, and batch 1)
SELECT create_model('wino_r18', 'resnet18', ARRAY['normal', 'pneumonia'], pretrained => false,
                    input_size => 64) > 0 AS created;
CREATE TEMP TABLE wino_direct AS
SELECT ord, probabilities FROM predict_batch('wino_r18', ARRAY(SELECT image FROM samples ORDER BY name), 4);
SELECT (runtime_info()->>'winograd_convolutions')::bigint AS wino_before \gset
SET medtl.conv_kernels = winograd;
SELECT runtime_info()->>'conv_kernels_setting' AS setting;
SELECT count(*) AS probabilities, max(abs(d.p - w.p)) < 1e-3 AS close,
       bool_or(d.p <> w.p) OR runtime_info()->>'cpu_features' !~ 'avx512f'
           OR runtime_info()->>'conv_kernels' !~ '^oneDNN [0-9]' AS winograd_in_effect,
       (runtime_info()->>'winograd_convolutions')::bigint > :wino_before
           OR runtime_info()->>'cpu_features' !~ 'avx512f'
           OR runtime_info()->>'conv_kernels' !~ '^oneDNN [0-9]' AS counted
  FROM (SELECT ord, k, p FROM wino_direct, unnest(probabilities) WITH ORDINALITY u(p, k)) d
  JOIN (SELECT ord, k, p
          FROM predict_batch('wino_r18', ARRAY(SELECT image FROM samples ORDER BY name), 4) b,
               unnest(b.probabilities) WITH ORDINALITY u(p, k)) w USING (ord, k);
RESET medtl.conv_kernels;
SELECT drop_model('wino_r18');
SET medtl.conv_kernels = fastest;
-- bfloat16 convolutions (medtl.precision = bf16): the same top-1 label for
-- every sample and logits within bf16's rounding of the float32 ones (where
-- oneDNN is absent convolutions stay float32 and the logits are equal);
-- back at fp32 the cached model scores exactly as before
SET medtl.precision = bf16;
SELECT runtime_info()->>'precision' AS precision;
CREATE TEMP TABLE lg_bf16 AS SELECT name, logits('mobilenet_v2_imagenet', image) AS lg FROM samples;
SELECT count(*) AS samples,
       count(*) FILTER (WHERE (SELECT array_position(a.lg, max(v)) FROM unnest(a.lg) v)
                            = (SELECT array_position(b.lg, max(v)) FROM unnest(b.lg) v)) AS same_top1
  FROM lg_auto a JOIN lg_bf16 b USING (name);
SELECT max(abs(x.a - x.b)) < 0.5 AS close,
       max(abs(x.a)) > 5 AS logits_not_trivial,
       max(abs(x.a - x.b)) > 0 OR runtime_info()->>'conv_kernels' !~ '^oneDNN [0-9]' AS bf16_in_effect
  FROM (SELECT unnest(a.lg) AS a, unnest(b.lg) AS b FROM lg_auto a JOIN lg_bf16 b USING (name)) x;
RESET medtl.precision;
SELECT runtime_info()->>'precision' AS precision;
SELECT count(*) AS logits, max(abs(x.a - x.f)) = 0 AS same_as_before
  FROM (SELECT unnest(l.lg) AS a, unnest(logits('mobilenet_v2_imagenet', s.image)) AS f
          FROM samples s JOIN lg_auto l USING (name)) x;
SET medtl.precision = half;
-- medtl.jpeg_scaling: a JPEG at least twice the input size decodes at 1/2,
-- 1/4 or 1/8 scale (test_image checks the sizes and the pixels); the
-- shared chest X-rays are 224 pixels a side already, so they score exactly
-- as before, and so do PNGs
CREATE TEMP TABLE lg_full AS SELECT path, logits('mobilenet_v2_imagenet', image) AS lg,
       (image_info(image)).width AS w, (image_info(image)).height AS h FROM xrays;
SET medtl.jpeg_scaling = on;
SELECT count(*) AS jpegs, max(greatest(f.w, f.h)) AS largest_side,
       bool_and(f.lg = logits('mobilenet_v2_imagenet', x.image)) AS unchanged
  FROM lg_full f JOIN xrays x USING (path);
SELECT count(*) AS pngs, bool_and(l.lg = logits('mobilenet_v2_imagenet', s.image)) AS unchanged
  FROM samples s JOIN lg_auto l USING (name);
RESET medtl.jpeg_scaling;
