-- segmentation_metrics: Dice and IoU of masks, per pair and as aggregates
\getenv shared MEDTL_SHARED
SET search_path = public, medtl;

-- masks built in SQL: mask_png encodes rows of pixels as an 8-bit gray PNG
SELECT medtl.image_info(mask_png(ARRAY[[0, 255, 0], [255, 255, 0]]));
SELECT mask_pixels(mask_png(ARRAY[[0, 255, 0], [255, 255, 0]]));
SELECT * FROM mask_info(mask_png(ARRAY[[0, 1, 2], [3, 255, 0]]));

-- identical, disjoint, overlapping
SELECT dice(mask_png(ARRAY[[0, 255], [255, 0]]), mask_png(ARRAY[[0, 255], [255, 0]])) AS identical,
       dice(mask_png(ARRAY[[0, 255], [0, 0]]), mask_png(ARRAY[[0, 0], [255, 0]])) AS disjoint,
       round(dice(mask_png(ARRAY[[255, 255], [255, 0]]), mask_png(ARRAY[[255, 0], [0, 0]]))::numeric, 4) AS dice_half,
       round(iou(mask_png(ARRAY[[255, 255], [255, 0]]), mask_png(ARRAY[[255, 0], [0, 0]]))::numeric, 4) AS iou_third;
-- 0/1 and 0/255 masks mean the same
SELECT dice(mask_png(ARRAY[[0, 1], [1, 1]]), mask_png(ARRAY[[0, 255], [255, 255]])) AS zero_one_vs_255,
       iou(mask_png(ARRAY[[0, 1], [1, 1]]), mask_png(ARRAY[[0, 255], [255, 255]])) AS iou_same;

-- empty masks: both empty -> empty_value (default 1, selectable, NULL allowed); one empty -> 0
SELECT dice(mask_png(ARRAY[[0, 0]]), mask_png(ARRAY[[0, 0]])) AS both_empty,
       dice(mask_png(ARRAY[[0, 0]]), mask_png(ARRAY[[0, 0]]), 0.5) AS custom,
       dice(mask_png(ARRAY[[0, 0]]), mask_png(ARRAY[[0, 0]]), NULL) IS NULL AS null_empty,
       iou(mask_png(ARRAY[[0, 0]]), mask_png(ARRAY[[0, 0]]), empty_value => 0) AS iou_custom,
       dice(mask_png(ARRAY[[0, 0]]), mask_png(ARRAY[[0, 255]])) AS pred_empty,
       iou(mask_png(ARRAY[[255, 0]]), mask_png(ARRAY[[0, 0]])) AS truth_empty;
-- NULL masks give NULL
SELECT dice(NULL, mask_png(ARRAY[[0]])) IS NULL AS null_pred,
       iou(mask_png(ARRAY[[0]]), NULL) IS NULL AS null_truth;

-- multi-class masks: foreground is any nonzero class, or one class with class =>
SELECT round(dice(mask_png(ARRAY[[0, 1, 2, 2]]), mask_png(ARRAY[[0, 1, 1, 2]]))::numeric, 4) AS any_class,
       round(dice(mask_png(ARRAY[[0, 1, 2, 2]]), mask_png(ARRAY[[0, 1, 1, 2]]), class => 1)::numeric, 4) AS class_1,
       round(dice(mask_png(ARRAY[[0, 1, 2, 2]]), mask_png(ARRAY[[0, 1, 1, 2]]), class => 2)::numeric, 4) AS class_2,
       iou(mask_png(ARRAY[[0, 1, 2, 2]]), mask_png(ARRAY[[0, 1, 1, 2]]), class => 0) AS class_0,
       dice(mask_png(ARRAY[[0, 1, 2, 2]]), mask_png(ARRAY[[0, 1, 1, 2]]), 0.25, 3) AS class_3_absent;
-- non-binary values count as foreground (metrics do not validate; training does)
SELECT dice(mask_png(ARRAY[[0, 128, 7]]), mask_png(ARRAY[[0, 255, 255]])) AS any_nonzero;

-- errors: sizes, colour, corrupt bytes, bad arguments
SELECT dice(mask_png(array_fill(0, ARRAY[4, 6])), mask_png(array_fill(0, ARRAY[3, 6])));
SELECT iou(mask_png(ARRAY[[0, 255]]), mask_png(ARRAY[[0], [255]]));
SELECT dice(image, image) FROM samples WHERE name = 'bird_224.png';
SELECT dice('\x89504e470d0a1a0a0000'::bytea, mask_png(ARRAY[[0]]));
SELECT dice(mask_png(ARRAY[[0]]), 'not a mask'::bytea);
SELECT dice(mask_png(ARRAY[[0]]), ''::bytea);
SELECT dice(mask_png(ARRAY[[0]]), mask_png(ARRAY[[0]]), class => 256);
SELECT dice(mask_png(ARRAY[[0]]), mask_png(ARRAY[[0]]), class => -1);
SELECT mask_png(ARRAY[[0, 256]]);
SELECT mask_png(ARRAY[[0, NULL]]);
SELECT mask_png(ARRAY[[[0]]]);
SELECT mask_pixels('\xffd8ff00'::bytea);
-- their SQLSTATEs: size mismatch 22000, colour or bad argument 22023, corrupt bytes 22P03, NULL pixel 22004
\set VERBOSITY sqlstate
SELECT dice(mask_png(array_fill(0, ARRAY[4, 6])), mask_png(array_fill(0, ARRAY[3, 6])));
SELECT dice(image, image) FROM samples WHERE name = 'bird_224.png';
SELECT dice(mask_png(ARRAY[[0]]), mask_png(ARRAY[[0]]), class => 256);
SELECT dice('\x89504e470d0a1a0a0000'::bytea, mask_png(ARRAY[[0]]));
SELECT iou(mask_png(ARRAY[[0]]), 'not a mask'::bytea);
SELECT mask_png(ARRAY[[0, NULL]]);
\set VERBOSITY default

-- JPEG masks (here chest X-rays read as masks): luminance above 127 is foreground
SELECT format, width > 0 AS has_size, foreground > 0 AS has_foreground
  FROM xrays, mask_info(image) WHERE id = 1;
SELECT dice(image, image) AS jpeg_self FROM xrays WHERE id = 1;

-- a real Kvasir-SEG mask (256 x 256, 0/255) against itself and its complement
\set kvasir :shared '/data/kvasir_seg/masks/cju0qkwl35piu0993l0dewei2.png'
CREATE TABLE kv AS SELECT medtl.read_server_file(:'kvasir') AS m;
SELECT (mask_info(m)).* FROM kv;
WITH px AS (SELECT v, o FROM kv, unnest(mask_pixels(m)) WITH ORDINALITY u(v, o)),
     comp AS (SELECT array_agg(r ORDER BY y) AS c
                FROM (SELECT (o - 1) / 256 AS y, array_agg(255 - v ORDER BY o) AS r
                        FROM px GROUP BY 1) s)
SELECT dice(m, m) AS self, iou(m, m) AS iou_self,
       dice(m, mask_png(c)) AS complement, iou(mask_png(c), m) AS iou_complement
  FROM kv, comp;

-- aggregates over rows, with GROUP BY; NULL masks are skipped
CREATE TABLE seg (site text, id int, predicted bytea, truth bytea);
INSERT INTO seg VALUES
  ('a', 1, mask_png(ARRAY[[255, 255], [0, 0]]), mask_png(ARRAY[[255, 0], [0, 0]])),   -- dice 2/3, iou 1/2
  ('a', 2, mask_png(ARRAY[[0, 0], [0, 0]]), mask_png(ARRAY[[0, 0], [0, 0]])),         -- both empty
  ('a', 3, mask_png(ARRAY[[0, 0], [0, 255]]), mask_png(ARRAY[[0, 0], [0, 1]])),       -- 1, 1
  ('b', 4, mask_png(ARRAY[[255, 0], [0, 0]]), mask_png(ARRAY[[0, 0], [0, 255]])),     -- 0, 0
  ('b', 5, NULL, mask_png(ARRAY[[255, 0], [0, 0]])),                                 -- skipped
  ('c', 6, mask_png(ARRAY[[0, 0], [0, 0]]), mask_png(ARRAY[[0, 0], [0, 0]]));         -- all empty
SELECT site,
       round(mean_dice(predicted, truth)::numeric, 4) AS mean_dice,
       round(pooled_dice(predicted, truth)::numeric, 4) AS pooled_dice,
       round(mean_iou(predicted, truth)::numeric, 4) AS mean_iou,
       round(pooled_iou(predicted, truth)::numeric, 4) AS pooled_iou,
       round(mean_dice(predicted, truth, NULL)::numeric, 4) AS mean_dice_skip_empty,
       pooled_dice(predicted, truth, 0) AS pooled_dice_empty0
  FROM seg GROUP BY site ORDER BY site;
-- the aggregate equals the mean of the per-pair function
SELECT round(mean_dice(predicted, truth)::numeric, 10) = round(avg(dice(predicted, truth))::numeric, 10) AS mean_matches,
       round(mean_iou(predicted, truth, NULL)::numeric, 10) = round(avg(iou(predicted, truth, NULL))::numeric, 10) AS iou_matches
  FROM seg;
-- per-class aggregates on multi-class masks
SELECT c, round(mean_dice(p, t, 1.0, c)::numeric, 4) AS mean_dice, round(pooled_iou(p, t, 1.0, c)::numeric, 4) AS pooled_iou
  FROM (VALUES (mask_png(ARRAY[[0, 1, 2, 2]]), mask_png(ARRAY[[0, 1, 1, 2]])),
               (mask_png(ARRAY[[1, 1, 0, 0]]), mask_png(ARRAY[[1, 1, 0, 0]]))) v(p, t),
       generate_series(0, 3) c
 GROUP BY c ORDER BY c;
-- no rows: NULL
SELECT mean_dice(predicted, truth) IS NULL AS no_rows, pooled_iou(predicted, truth) IS NULL AS no_rows_pooled
  FROM seg WHERE false;
-- an error inside the aggregate names the problem
SELECT mean_dice(predicted, mask_png(ARRAY[[0]])) FROM seg;

-- parallel aggregation (partial states serialised and combined) gives the same answers
CREATE TABLE seg_many AS
SELECT i % 7 AS g, predicted, truth FROM seg, generate_series(1, 200) i WHERE predicted IS NOT NULL;
CREATE TEMP TABLE serial_result AS
SELECT g, mean_dice(predicted, truth) md, pooled_dice(predicted, truth) pd,
       mean_iou(predicted, truth) mi, pooled_iou(predicted, truth) pi
  FROM seg_many GROUP BY g;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
SELECT count(*) AS groups_matching
  FROM (SELECT g, mean_dice(predicted, truth) md, pooled_dice(predicted, truth) pd,
               mean_iou(predicted, truth) mi, pooled_iou(predicted, truth) pi
          FROM seg_many GROUP BY g) p
  JOIN serial_result s USING (g)
 WHERE abs(p.md - s.md) < 1e-12 AND p.pd = s.pd AND abs(p.mi - s.mi) < 1e-12 AND p.pi = s.pi;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
RESET parallel_leader_participation;

-- declared immutable and parallel safe
SELECT p.proname, p.prokind, p.provolatile, p.proparallel, count(*)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'medtl'
   AND p.proname IN ('dice', 'iou', 'mean_dice', 'pooled_dice', 'mean_iou', 'pooled_iou',
                     'mask_png', 'mask_pixels', 'mask_info')
 GROUP BY 1, 2, 3, 4 ORDER BY 1;
DROP TABLE seg, seg_many, kv;
