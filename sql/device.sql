-- device: medtl.device chooses where inference runs.  CI has no GPU and
-- builds without CUDA: 'cuda' is a clean error, 'auto' falls back to the CPU.
SET search_path = public, medtl;
SELECT runtime_info()->>'device' AS device, runtime_info()->>'device_setting' AS setting,
       runtime_info()->>'cuda_built' AS cuda_built;
SHOW medtl.device;
SHOW medtl.device_memory_mb;

-- a small model from scratch, scored on the CPU first
SELECT create_model('dev_net', 'resnet18', ARRAY['normal', 'pneumonia'],
                    pretrained => false, input_size => 64) > 0 AS created;
CREATE TABLE dev_cpu AS
SELECT id, predict('dev_net', image) AS label, predict_proba('dev_net', image) AS p,
       embed('dev_net', image) AS e
  FROM xrays WHERE id <= 4;
SELECT count(*) AS scored, min(cardinality(e)) AS dim FROM dev_cpu;

-- cuda without a device (or without CUDA in the build): an error when a
-- model is used, not when the setting is made; the session stays usable
\set VERBOSITY default
SET medtl.device = 'cuda';
SHOW medtl.device;
SELECT runtime_info()->>'device' AS device, runtime_info()->>'device_setting' AS setting;
SELECT predict('dev_net', image) FROM xrays WHERE id = 1;
\set VERBOSITY terse
SELECT predict_proba('dev_net', image) FROM xrays WHERE id = 1;
SELECT embed('dev_net', image) FROM xrays WHERE id = 1;
SELECT count(*) FROM predict_batch('dev_net', ARRAY(SELECT image FROM xrays WHERE id <= 2));
SELECT evaluate('dev_net', 'SELECT image, label FROM xrays WHERE id <= 4');
-- training follows medtl.device too: under cuda without a device it fails
-- the same way, before any step, and the model's weights stay as they were
CREATE TEMP TABLE dev_before AS
SELECT w.tensor, md5(w.data) AS h FROM medtl.weights w JOIN medtl.models m USING (model_id)
 WHERE m.name = 'dev_net';
SET client_min_messages = warning;
SELECT train('dev_net', 'SELECT image, label FROM xrays', epochs => 1, batch_size => 8,
             validation => 0);
RESET client_min_messages;
SELECT count(*) AS tensors, count(*) FILTER (WHERE md5(w.data) <> b.h) AS changed
  FROM dev_before b JOIN medtl.weights w USING (tensor) JOIN medtl.models m USING (model_id)
 WHERE m.name = 'dev_net';
\set VERBOSITY default
-- auto without a device trains on the CPU, and the run says where
SET medtl.device = 'auto';
SET client_min_messages = warning;
SELECT train('dev_net', 'SELECT image, label FROM xrays', epochs => 1, batch_size => 8,
             validation => 0) > 0 AS trained;
RESET client_min_messages;
SELECT resolved->'phases'->0->>'device' AS trained_on FROM medtl.runs
 WHERE model_id = (SELECT model_id FROM medtl.models WHERE name = 'dev_net')
 ORDER BY run_id DESC LIMIT 1;
SET medtl.device = 'cuda';

-- auto: a device when there is one, else the CPU, silently
SET medtl.device = 'auto';
SELECT runtime_info()->>'device' AS device, runtime_info()->>'device_setting' AS setting;
CREATE TABLE dev_auto AS
SELECT id, predict('dev_net', image) AS label, predict_proba('dev_net', image) AS p
  FROM xrays WHERE id <= 4;
SELECT count(*) AS scored FROM dev_auto;
SELECT count(*) AS batch_rows FROM predict_batch('dev_net', ARRAY(SELECT image FROM xrays WHERE id <= 2));
SELECT evaluate('dev_net', 'SELECT image, label FROM xrays WHERE id <= 4') > 0 AS evaluated;

-- back to the CPU: the same answers as under auto here
SET medtl.device = 'cpu';
SELECT bool_and(c.label = a.label) AS same_labels,
       max((SELECT max(abs(x - y)) FROM unnest(c.p, a.p) u(x, y))) < 1e-5 AS same_proba
  FROM dev_auto a JOIN (SELECT id, predict('dev_net', image) AS label,
                               predict_proba('dev_net', image) AS p
                          FROM xrays WHERE id <= 4) c USING (id);

-- the memory cap takes sizes; bad values are refused
SET medtl.device_memory_mb = '2GB';
SHOW medtl.device_memory_mb;
RESET medtl.device_memory_mb;
\set VERBOSITY terse
SET medtl.device = 'gpu';
SET medtl.device = '';
SET medtl.device_memory_mb = -1;
SHOW medtl.device;
\set VERBOSITY default
RESET medtl.device;

DROP TABLE dev_cpu, dev_auto;
SELECT drop_model('dev_net');
