-- setup: the extension, and the images later tests use (read from ../shared)
\getenv shared MEDTL_SHARED
CREATE EXTENSION medtl;
SELECT extname, extversion FROM pg_extension WHERE extname = 'medtl';
SHOW medtl.threads;
SELECT (medtl.runtime_info()) ?& ARRAY['blas_core', 'blas_library', 'cpu_features', 'threads', 'device'] AS has_keys;
SELECT medtl.runtime_info()->>'device' AS device;

-- the three ImageNet samples, at original size and as the 224x224 network input
\set samples :shared '/models/mobilenet_v2_imagenet/samples/'
CREATE TABLE samples (name text PRIMARY KEY, image bytea NOT NULL);
INSERT INTO samples
SELECT n, medtl.read_server_file(:'samples' || n)
  FROM unnest(ARRAY['bird.png', 'bird_224.png', 'cat.png', 'cat_224.png',
                    'grace_hopper.png', 'grace_hopper_224.png']) n;
SELECT count(*) FROM samples;

-- the reference logits shipped with the model
CREATE TABLE expected_logits (image text, padding text, class_index int, logit float8);
\set logits :samples 'expected_logits.csv'
COPY expected_logits FROM :'logits' WITH (FORMAT csv, HEADER);
SELECT padding, count(*) FROM expected_logits GROUP BY padding ORDER BY padding;

-- 24 chest X-rays of the test split (12 per class)
\set chest :shared '/data/chest_xray/'
CREATE TABLE chest_manifest (path text, label text, split text, patient text, subtype text);
\set manifest :chest 'manifest.csv'
COPY chest_manifest FROM :'manifest' WITH (FORMAT csv, HEADER);
CREATE TABLE xrays AS
SELECT row_number() OVER (ORDER BY label, path) AS id, label, path,
       medtl.read_server_file(:'chest' || path) AS image
  FROM (SELECT *, row_number() OVER (PARTITION BY label ORDER BY path) AS k
          FROM chest_manifest WHERE split = 'test') m
 WHERE k <= 12;
SELECT label, count(*) FROM xrays GROUP BY label ORDER BY label;
