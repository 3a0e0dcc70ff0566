-- test/cuda_emu/train_check.sql - training from SQL on the device against
-- the CPU: on the CUDA emulation (a medtl.so built by
-- test/cuda_emu/build_so.sh, installed in a dev cluster) or on a real GPU
-- (test/gpu_sql_check.sh runs it there).  Needs pg_regress's setup tables
-- (the 24 X-rays of sql/setup.sql) and MEDTL_SHARED for the MobileNetV2:
--   psql -d contrib_regression -f test/cuda_emu/train_check.sql
-- Prints the epoch losses of the runs and the largest differences of their
-- predict_proba over every row; about 2 minutes on the emulation.  Lines
-- starting "ok:" or "FAIL:" are the verdicts (gpu_sql_check.sh counts
-- them):
--   - every layer of the pretrained MobileNetV2 fine-tuned (frozen batch
--     norm, SGD at 1e-3: the setting users train in) on the device vs the
--     CPU: the first epoch's mean training loss within 1e-3 (relative), the
--     probabilities after the two epochs within 1e-2 (this checks the
--     plumbing: batches, schedule, weights back from the device; one step's
--     every gradient is checked far tighter by cuda_train_check, and the
--     steps that follow amplify the kernels' different summation orders:
--     2.9e-3 between the CPU's oneDNN and the emulation's im2col + GEMM);
--   - the same with augmentation (on the device: the batch goes up as
--     bytes and is augmented there), a moving average of the weights (ema
--     0.5: validation and the stored weights are the average's) and head
--     dropout 0.2: the
--     first epoch's training loss within 1e-3, the second's validation
--     loss within 1e-2 (both relative), the probabilities within 1e-2 (the
--     average itself is checked far tighter by cuda_train_check);
--   - the head alone on device features in bf16 vs the CPU in float32:
--     within 2e-2;
--   - the runs record "device": "cuda";
--   - a U-Net (pretrained encoder, every layer, augmentation) on 12
--     Kvasir-SEG pairs, its batches and masks augmented on the device and
--     its loss computed there: epoch 1 training loss within 1e-3
--     (relative), pixel accuracy within 1e-3, the two models' masks of the
--     12 images at Dice 0.95 or more (after two steps most pixels' two
--     probabilities are near 0.5, so the last bits flip a few boundary
--     pixels: 0.977 for the worst image on the emulation);
--   - a run over the device memory cap and two statement_timeout cancels
--     leave the weights as they were and no device memory but the
--     backend's workspace.
-- A ResNet-18 from scratch (batch norm over 9 images, so chaotic: ReLU
-- kinks and small-batch statistics amplify the last bits) is trained too and
-- its difference printed for information, beside the CPU's own difference
-- with its other convolution kernels (none where oneDNN is absent).
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
\getenv shared MEDTL_SHARED
\set mnv2 :shared '/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.safetensors'
SELECT import_model_file('emu_backbone', 'mobilenet_v2', :'mnv2', padding => 'tf_same') > 0 AS imported;
SELECT create_model('emu_' || c, 'emu_backbone', ARRAY['normal', 'pneumonia'], input_size => 96) > 0 AS created
  FROM unnest(ARRAY['f', 'g', 'h', 'i']) c;
SET client_min_messages = notice;
-- the pretrained MobileNetV2, every layer, frozen batch norm (its default), SGD at 1e-3
-- (at 1e-2 the loss rises: a diverging run says nothing of the device)
SET medtl.device = cpu;
SELECT train('emu_f', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => false, optimizer => 'sgd', lr => 0.001, seed => 7) AS run_f \gset
SET medtl.device = cuda;
SELECT train('emu_g', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => false, optimizer => 'sgd', lr => 0.001, seed => 7) AS run_g \gset
-- the same with augmentation, a moving average of the weights and head dropout
SET medtl.device = cpu;
SELECT train('emu_h', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => true, optimizer => 'sgd', lr => 0.001, seed => 7,
             ema => 0.5, dropout => 0.2) AS run_h \gset
SET medtl.device = cuda;
SELECT train('emu_i', 'SELECT image, label FROM xrays', epochs => 2, batch_size => 9, validation => 0.25,
             freeze => 'none', augment => true, optimizer => 'sgd', lr => 0.001, seed => 7,
             ema => 0.5, dropout => 0.2) AS run_i \gset
-- ResNet-18 from scratch, every layer, SGD (AdamW's first steps follow the gradients' signs)
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
 WHERE r.run_id IN (:run_f, :run_g, :run_h, :run_i, :run_a, :run_b, :run_e, :run_c, :run_d) ORDER BY r.run_id, e.epoch;
SET medtl.device = cpu;
SELECT max(abs(pf - pg)) AS pretrained_cpu_vs_device, max(abs(ph - pi)) AS ema_cpu_vs_device,
       max(abs(pa - pb)) AS scratch_cpu_vs_device,
       max(abs(pa - pe)) AS scratch_cpu_vs_cpu_gemm, max(abs(pc - pd)) AS head_cpu_vs_device_bf16
  FROM (SELECT unnest(predict_proba('emu_f', image)) AS pf, unnest(predict_proba('emu_g', image)) AS pg,
               unnest(predict_proba('emu_h', image)) AS ph, unnest(predict_proba('emu_i', image)) AS pi,
               unnest(predict_proba('emu_a', image)) AS pa, unnest(predict_proba('emu_b', image)) AS pb,
               unnest(predict_proba('emu_e', image)) AS pe,
               unnest(predict_proba('emu_c', image)) AS pc, unnest(predict_proba('emu_d', image)) AS pd
          FROM xrays) s \gset
\pset tuples_only on
SELECT CASE WHEN abs(f.train_loss - g.train_loss) <= 1e-3 * abs(f.train_loss) THEN 'ok' ELSE 'FAIL' END
       || format(': the pretrained MobileNetV2 fine-tuned on the device vs the CPU, epoch 1 train loss %s vs %s',
                 round(g.train_loss::numeric, 7), round(f.train_loss::numeric, 7)) AS verdict
  FROM medtl.epochs f, medtl.epochs g
 WHERE f.run_id = :run_f AND g.run_id = :run_g AND f.epoch = 1 AND g.epoch = 1;
SELECT CASE WHEN :pretrained_cpu_vs_device <= 1e-2 THEN 'ok' ELSE 'FAIL' END
       || format(': the same after 2 epochs, largest probability difference %s',
                 round(:pretrained_cpu_vs_device::numeric, 7)) AS verdict;
SELECT CASE WHEN abs(h1.train_loss - i1.train_loss) <= 1e-3 * abs(h1.train_loss)
             AND abs(h2.val_loss - i2.val_loss) <= 1e-2 * abs(h2.val_loss) AND :ema_cpu_vs_device <= 1e-2
            THEN 'ok' ELSE 'FAIL' END
       || format(': with augmentation, ema 0.5 and dropout 0.2, device vs CPU: epoch 1 train loss %s vs %s, '
                 'epoch 2 val loss (of the average) %s vs %s, largest probability difference %s',
                 round(i1.train_loss::numeric, 7), round(h1.train_loss::numeric, 7),
                 round(i2.val_loss::numeric, 7), round(h2.val_loss::numeric, 7),
                 round(:ema_cpu_vs_device::numeric, 7)) AS verdict
  FROM medtl.epochs h1, medtl.epochs i1, medtl.epochs h2, medtl.epochs i2
 WHERE h1.run_id = :run_h AND i1.run_id = :run_i AND h2.run_id = :run_h AND i2.run_id = :run_i
   AND h1.epoch = 1 AND i1.epoch = 1 AND h2.epoch = 2 AND i2.epoch = 2;
SELECT format('info: ResNet-18 from scratch trained on the device vs the CPU, largest probability difference %s '
              '(the CPU with its other kernels: %s)',
              round(:scratch_cpu_vs_device::numeric, 7), round(:scratch_cpu_vs_cpu_gemm::numeric, 7)) AS info;
SELECT CASE WHEN :head_cpu_vs_device_bf16 <= 2e-2 THEN 'ok' ELSE 'FAIL' END
       || format(': the head on device features in bf16 vs the CPU in fp32, largest probability difference %s',
                 round(:head_cpu_vs_device_bf16::numeric, 7)) AS verdict;
SELECT CASE WHEN count(*) = 4 AND bool_and(r.resolved->'phases'->0->>'device' = 'cuda') THEN 'ok' ELSE 'FAIL' END
       || ': the runs under medtl.device = cuda record "device": "cuda"' AS verdict
  FROM medtl.runs r WHERE r.run_id IN (:run_g, :run_i, :run_b, :run_d);
-- a U-Net on the pretrained encoder, every layer, with augmentation: on the
-- device its batches go up as bytes with their masks, are augmented there,
-- and the loss (cross-entropy + Dice) and the pixel accuracy are computed
-- there; 12 Kvasir-SEG pairs at 64x64, one epoch, against the CPU
\pset tuples_only off
\set kv :shared '/data/kvasir_seg/'
\set kvm :kv 'manifest.csv'
CREATE TEMP TABLE emu_kvm (image text, mask text, split text);
COPY emu_kvm FROM :'kvm' WITH (FORMAT csv, HEADER);
-- (the 12 names first: a GPU bundle holds only the first 16 pairs' files)
CREATE TEMP TABLE emu_kv AS
SELECT read_server_file(:'kv' || image) AS image, read_server_file(:'kv' || mask) AS mask
  FROM (SELECT image, mask FROM emu_kvm WHERE split = 'train' ORDER BY image LIMIT 12) k;
SELECT create_model('emu_' || c, 'emu_backbone', ARRAY['background', 'polyp'], task => 'segmentation',
                    input_size => 64) > 0 AS created
  FROM unnest(ARRAY['sc', 'sd']) c;
SET medtl.device = cpu;
SELECT train('emu_sc', 'SELECT image, mask FROM emu_kv', epochs => 1, batch_size => 6, validation => 0,
             freeze => 'none', augment => true, seed => 7) AS run_sc \gset
SET medtl.device = cuda;
SELECT train('emu_sd', 'SELECT image, mask FROM emu_kv', epochs => 1, batch_size => 6, validation => 0,
             freeze => 'none', augment => true, seed => 7) AS run_sd \gset
SET medtl.device = cpu;
SELECT min(dice(segment('emu_sc', image), segment('emu_sd', image))) AS seg_dice FROM emu_kv \gset
\pset tuples_only on
SELECT CASE WHEN abs(c.train_loss - d.train_loss) <= 1e-3 * abs(c.train_loss)
             AND abs(c.train_accuracy - d.train_accuracy) <= 1e-3
             AND r.resolved->'phases'->0->>'device' = 'cuda' AND :seg_dice >= 0.95
            THEN 'ok' ELSE 'FAIL' END
       || format(': a U-Net with augmentation, batches, masks and loss on the device vs the CPU: epoch 1 '
                 'train loss %s vs %s, pixel accuracy %s vs %s, lowest Dice between their masks %s',
                 round(d.train_loss::numeric, 7), round(c.train_loss::numeric, 7),
                 round(d.train_accuracy::numeric, 7), round(c.train_accuracy::numeric, 7),
                 round(:seg_dice::numeric, 5)) AS verdict
  FROM medtl.epochs c, medtl.epochs d, medtl.runs r
 WHERE c.run_id = :run_sc AND d.run_id = :run_sd AND c.epoch = 1 AND d.epoch = 1 AND r.run_id = :run_sd;
\pset tuples_only off
SELECT md5(string_agg(md5(w.data), ',' ORDER BY w.tensor)) AS weights_before
  FROM medtl.weights w JOIN medtl.models m USING (model_id) WHERE m.name = 'emu_b' \gset
-- over the device memory cap: 54000, nothing left allocated
SET medtl.device = cuda;
SET medtl.device_memory_mb = 60;
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 1, batch_size => 9,
             freeze => 'none', augment => false, seed => 7);
SELECT runtime_info()->>'device_memory_used_mb' AS used_after_limit;
-- cancelled mid-run: only the backend's workspace stays (the same after a second cancel)
SET medtl.device_memory_mb = 0;
-- (1000 epochs: a real device runs one of these in a tenth of a second)
SET statement_timeout = '3s';
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 1000, batch_size => 9,
             freeze => 'none', augment => false, seed => 7);
SELECT runtime_info()->>'device_memory_used_mb' AS used_after_cancel;
SELECT train('emu_b', 'SELECT image, label FROM xrays', epochs => 1000, batch_size => 9,
             freeze => 'none', augment => false, seed => 7);
RESET statement_timeout;
SELECT runtime_info()->>'device_memory_used_mb' AS used_after_second_cancel;
\pset tuples_only on
SELECT CASE WHEN md5(string_agg(md5(w.data), ',' ORDER BY w.tensor)) = :'weights_before' THEN 'ok' ELSE 'FAIL' END
       || ': the weights are unchanged by the run over the memory cap and the two cancelled runs' AS verdict
  FROM medtl.weights w JOIN medtl.models m USING (model_id) WHERE m.name = 'emu_b';
SELECT CASE WHEN (runtime_info()->>'device_memory_used_mb')::float8 < 64 THEN 'ok' ELSE 'FAIL' END
       || format(': device memory held after the cancels: %s MB (the workspace only)',
                 runtime_info()->>'device_memory_used_mb') AS verdict;
\pset tuples_only off
SET medtl.device = cpu;
SELECT drop_model(name) FROM medtl.models WHERE name LIKE 'emu\_%';
