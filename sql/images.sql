-- images: header facts, decoding of JPEG and PNG through the public functions
\getenv shared MEDTL_SHARED
SELECT name, (medtl.image_info(image)).* FROM samples ORDER BY name;
SELECT DISTINCT (medtl.image_info(image)).* FROM xrays;

-- PNG variants made by the server itself are not possible in SQL; the C unit
-- tests cover gray, gray+alpha, palette, 16-bit and interlaced PNGs.  Here:
-- MedMNIST's 28x28 gray PNGs.
\set pm :shared '/data/pneumoniamnist/images/'
SELECT (medtl.image_info(medtl.read_server_file(:'pm' || 'test_0.png'))).*;

-- NULL in, NULL out
SELECT medtl.image_info(NULL) IS NULL AS null_is_null;

-- not an image
SELECT medtl.image_info('\x00010203'::bytea);
SELECT medtl.image_info(''::bytea);
