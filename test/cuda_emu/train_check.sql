-- test/cuda_emu/train_check.sql - training from SQL on the (emulated)
-- device against the CPU, for a medtl.so built by test/cuda_emu/build_so.sh
-- and installed in a dev cluster; run in the regression database after
-- `make installcheck` (it reads its xrays table):
--   psql -d contrib_regression -f test/cuda_emu/train_check.sql
-- Prints the epoch losses of the runs (CPU, device, CPU with other kernels;
-- then the head-only pair) and the largest differences of their
-- predict_proba over every row; about 2 minutes.
SET search_path = public, medtl;
SET client_min_messages = warning;
SELECT drop_model(name) FROM medtl.models WHERE name LIKE 'emu\_%';
SELECT create_model('emu_' || c, 'resnet18', ARRAY['normal', 'pneumonia'], pretrained => false,
                    input_size => 64) > 0 AS created
  FROM unnest(ARRAY['a', 'b', 'c', 'd', 'e']) c;
-- one set of initial weights for all four
UPDATE medtl.weights b SET data = a.data FROM medtl.weights a
 WHERE a.model_id = (SELECT model_id FROM medtl.models WHERE name = 'emu_a')
   AND b.model_id IN (SELECT model_id FROM medtl.models WHERE name IN ('emu_b', 'emu_c', 'emu_d', 'emu_e'))
   AND a.tensor = b.tensor;
SET client_min_messages = notice;
-- every layer training, SGD (AdamW's first steps follow the gradients' signs)
SET medtl.device = cpu;
SELECT train('emu_a', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => false, optimizer => 'sgd', lr => 0.01, seed => 7) AS run_a \gset
SET medtl.device = cuda;
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => false, optimizer => 'sgd', lr => 0.01, seed => 7) AS run_b \gset
-- the scale of such differences: the CPU again with its other convolution
-- kernels (im2col + GEMM instead of oneDNN); ReLU kinks and batch norm over
-- 9 images make this small run sensitive to summation order
SET medtl.device = cpu;
SET medtl.conv_kernels = gemm;
SELECT train('emu_e', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => false, optimizer => 'sgd', lr => 0.01, seed => 7) AS run_e \gset
RESET medtl.conv_kernels;
-- the head alone on features computed once (on the device), bf16
SET medtl.device = cpu;
SELECT train('emu_c', 'SELECT image, label FROM xrays', epochs => 3, batch_size => 9, validation => 0.25,
             augment => false, batch_norm => 'frozen', seed => 7) AS run_c \gset
SET medtl.device = cuda;
SET medtl.precision = bf16;
SELECT train('emu_d', 'SELECT image, label FROM xrays', epochs => 3, batch_size => 9, validation => 0.25,
             augment => false, batch_norm => 'frozen', seed => 7) AS run_d \gset
RESET medtl.precision;
SELECT r.run_id, p->>'device' AS device, p->>'precision' AS precision,
       p->>'head_only_features' AS features_once, e.epoch, e.train_loss, e.val_loss
  FROM medtl.runs r CROSS JOIN LATERAL (SELECT r.resolved->'phases'->0 AS p) x
  JOIN medtl.epochs e USING (run_id)
 WHERE r.run_id IN (:run_a, :run_b, :run_e, :run_c, :run_d) ORDER BY r.run_id, e.epoch;
SET medtl.device = cpu;
SELECT max(abs(pa - pb)) AS cpu_vs_device, max(abs(pa - pe)) AS cpu_vs_cpu_gemm,
       max(abs(pc - pd)) AS head_cpu_vs_device_bf16
  FROM (SELECT unnest(predict_proba('emu_a', image)) AS pa, unnest(predict_proba('emu_b', image)) AS pb,
               unnest(predict_proba('emu_e', image)) AS pe,
               unnest(predict_proba('emu_c', image)) AS pc, unnest(predict_proba('emu_d', image)) AS pd
          FROM xrays) s;
-- over the device memory cap: 54000, nothing left allocated
SET medtl.device = cuda;
SET medtl.device_memory_mb = 60;
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 1, batch_size => 9,
             freeze => 'none', augment => false, seed => 7);
SELECT runtime_info()->>'device_memory_used_mb' AS used_after_limit;
-- cancelled mid-run: only the backend's workspace stays (the same after a second cancel)
SET medtl.device_memory_mb = 0;
SET statement_timeout = '3s';
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 1, batch_size => 9,
             freeze => 'none', augment => false, seed => 7);
SELECT runtime_info()->>'device_memory_used_mb' AS used_after_cancel;
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 1, batch_size => 9,
             freeze => 'none', augment => false, seed => 7);
RESET statement_timeout;
SELECT runtime_info()->>'device_memory_used_mb' AS used_after_second_cancel;
SET medtl.device = cpu;
SELECT drop_model(name) FROM medtl.models WHERE name LIKE 'emu\_%';
