-- medtl 0.1.0: install script (the one editable script; upgrades are frozen deltas)
\echo Use "CREATE EXTENSION medtl" to load this file. \quit

GRANT USAGE ON SCHEMA medtl TO PUBLIC;

------------------------------------------------------------------------------
-- Registry: models and their weights as rows
------------------------------------------------------------------------------

CREATE TABLE medtl.models (
    model_id    bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE
                CHECK (char_length(name) BETWEEN 1 AND 200),
    arch        text NOT NULL,
    task        text NOT NULL DEFAULT 'classification'
                CHECK (task IN ('classification', 'segmentation')),
    labels      text[],
    num_classes int NOT NULL CHECK (num_classes >= 1),
    input_size  int NOT NULL DEFAULT 224 CHECK (input_size BETWEEN 16 AND 4096),
    mean        real[] NOT NULL DEFAULT '{0.485,0.456,0.406}'
                CHECK (cardinality(mean) = 3),
    std         real[] NOT NULL DEFAULT '{0.229,0.224,0.225}'
                CHECK (cardinality(std) = 3 AND 0 < ALL (std)),
    padding     text NOT NULL DEFAULT 'symmetric'
                CHECK (padding IN ('symmetric', 'tf_same')),
    parent_id   bigint REFERENCES medtl.models (model_id) ON DELETE SET NULL,
    source      text,
    sha256      text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    owner       name NOT NULL DEFAULT current_user,
    readers     name[] NOT NULL DEFAULT '{}',
    generation  bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (labels IS NULL OR cardinality(labels) = num_classes)
);
COMMENT ON TABLE medtl.models IS 'One row per model: architecture, task, labels, preprocessing, lineage and owner.';
COMMENT ON COLUMN medtl.models.readers IS 'Roles (or ''public'') that may see and score this model besides its owner.';
COMMENT ON COLUMN medtl.models.generation IS 'Bumped on every change to the model or its weights; backends reload cached models when it changes.';

CREATE TABLE medtl.weights (
    model_id    bigint NOT NULL REFERENCES medtl.models (model_id) ON DELETE CASCADE,
    tensor      text NOT NULL,
    shape       int[] NOT NULL,
    dtype       text NOT NULL CHECK (dtype IN ('F32', 'I64')),
    data        bytea NOT NULL,
    PRIMARY KEY (model_id, tensor)
);
COMMENT ON TABLE medtl.weights IS 'One row per tensor of a model, named as in the torchvision state_dict; data is little-endian.';

SELECT pg_catalog.pg_extension_config_dump('medtl.models', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.models_model_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.weights', '');

-- Any change to a model row or its weights bumps generation.
CREATE FUNCTION medtl._model_touched() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.generation := OLD.generation + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER models_touched BEFORE UPDATE ON medtl.models
    FOR EACH ROW EXECUTE FUNCTION medtl._model_touched();

CREATE FUNCTION medtl._weights_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE medtl.models m SET generation = m.generation + 1
     WHERE m.model_id IN (SELECT c.model_id FROM changed c);
    RETURN NULL;
END
$$;
CREATE TRIGGER weights_inserted AFTER INSERT ON medtl.weights
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION medtl._weights_changed();
CREATE TRIGGER weights_updated AFTER UPDATE ON medtl.weights
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION medtl._weights_changed();
CREATE TRIGGER weights_deleted AFTER DELETE ON medtl.weights
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION medtl._weights_changed();

------------------------------------------------------------------------------
-- Privileges: table grants plus row-level security.  A role sees a model it
-- owns (or whose owner role it is a member of) or that lists it (or 'public')
-- in readers; only the owner side may change or delete it.
------------------------------------------------------------------------------

-- Whether the current user has the privileges of role r (false for a dropped role).
CREATE FUNCTION medtl._is_member(r name) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT r = current_user
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
                    WHERE g.rolname = r AND pg_catalog.pg_has_role(g.oid, 'USAGE'))
$$;

CREATE FUNCTION medtl._may_read(owner name, readers name[]) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT medtl._is_member(owner)
        OR 'public' = ANY (readers)
        OR EXISTS (SELECT 1 FROM pg_catalog.unnest(readers) u(r) WHERE medtl._is_member(u.r))
$$;

ALTER TABLE medtl.models ENABLE ROW LEVEL SECURITY;
CREATE POLICY models_read ON medtl.models FOR SELECT
    USING (medtl._may_read(owner, readers));
CREATE POLICY models_insert ON medtl.models FOR INSERT
    WITH CHECK (medtl._is_member(owner));
CREATE POLICY models_update ON medtl.models FOR UPDATE
    USING (medtl._is_member(owner)) WITH CHECK (medtl._is_member(owner));
CREATE POLICY models_delete ON medtl.models FOR DELETE
    USING (medtl._is_member(owner));

ALTER TABLE medtl.weights ENABLE ROW LEVEL SECURITY;
CREATE POLICY weights_read ON medtl.weights FOR SELECT
    USING (EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = weights.model_id));
CREATE POLICY weights_write ON medtl.weights FOR ALL
    USING (EXISTS (SELECT 1 FROM medtl.models m
                    WHERE m.model_id = weights.model_id AND medtl._is_member(m.owner)))
    WITH CHECK (EXISTS (SELECT 1 FROM medtl.models m
                    WHERE m.model_id = weights.model_id AND medtl._is_member(m.owner)));

GRANT SELECT, INSERT, UPDATE, DELETE ON medtl.models, medtl.weights TO PUBLIC;
GRANT USAGE ON SEQUENCE medtl.models_model_id_seq TO PUBLIC;

------------------------------------------------------------------------------
-- Engine functions (C)
------------------------------------------------------------------------------

CREATE FUNCTION medtl.runtime_info() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'medtl_runtime_info' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION medtl.runtime_info() IS 'What the engine runs on: CPU features, BLAS library and kernel set, threads, device.';

CREATE FUNCTION medtl.image_info(image bytea,
    OUT format text, OUT width int, OUT height int, OUT channels int, OUT bit_depth int)
    AS 'MODULE_PATHNAME', 'medtl_image_info' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.image_info(bytea) IS 'Format, size, channels and bit depth of a JPEG or PNG, read from its header.';

CREATE FUNCTION medtl.safetensors_info(weights bytea, arch text DEFAULT NULL) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'medtl_safetensors_info' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION medtl.safetensors_info(bytea, text) IS 'Format, tensor count and metadata of a safetensors file or a PyTorch .pth checkpoint; with arch, also checks every tensor against that architecture.';

CREATE FUNCTION medtl._weight_rows(weights bytea, arch text,
    OUT tensor text, OUT shape int[], OUT dtype text, OUT data bytea)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'medtl_weight_rows' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl._weight_rows(bytea, text) IS 'The tensors of a safetensors file or .pth checkpoint (converted to float32), checked against arch, one row each (used by import_model).';

CREATE FUNCTION medtl._check_input_size(arch text, input_size int) RETURNS void
    AS 'MODULE_PATHNAME', 'medtl_check_input_size' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl._check_input_size(text, int) IS 'Raise if the architecture cannot take images of input_size (vit_b_16: multiples of 16 up to 1024).';

CREATE FUNCTION medtl.read_server_file(path text) RETURNS bytea
    AS 'MODULE_PATHNAME', 'medtl_read_server_file' LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.read_server_file(text) IS 'Bytes of a file on the database server; only for roles with the privileges of pg_read_server_files.';

CREATE FUNCTION medtl.predict(model text, image bytea) RETURNS text
    AS 'MODULE_PATHNAME', 'medtl_predict' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.predict(text, bytea) IS 'The most probable label of an image.';

CREATE FUNCTION medtl.predict_batch(model text, images bytea[], batch_size int DEFAULT 16,
    OUT ord int, OUT label text, OUT probabilities real[])
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'medtl_predict_batch' LANGUAGE C STABLE STRICT PARALLEL SAFE ROWS 100;
COMMENT ON FUNCTION medtl.predict_batch(text, bytea[], int) IS 'Score an array of images in forward passes of batch_size: one row per element (ord = array position) with the most probable label and the probabilities; NULL elements give NULLs.';

CREATE FUNCTION medtl.predict_proba(model text, image bytea) RETURNS real[]
    AS 'MODULE_PATHNAME', 'medtl_predict_proba' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.predict_proba(text, bytea) IS 'Class probabilities (softmax) of an image, in label order.';

CREATE FUNCTION medtl.logits(model text, image bytea) RETURNS real[]
    AS 'MODULE_PATHNAME', 'medtl_logits' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.logits(text, bytea) IS 'Raw class scores (before softmax) of an image, in label order.';

CREATE FUNCTION medtl.embed(model text, image bytea) RETURNS real[]
    AS 'MODULE_PATHNAME', 'medtl_embed' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.embed(text, bytea) IS 'Pooled backbone features of an image (e.g. 1280 for mobilenet_v2, 512 for resnet18); cast to a pgvector vector if wanted.';

CREATE FUNCTION medtl.predict_topk(model text, image bytea, k int DEFAULT 5,
    OUT rank int, OUT class_index int, OUT label text, OUT probability real)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'medtl_predict_topk' LANGUAGE C STABLE STRICT PARALLEL SAFE ROWS 5;
COMMENT ON FUNCTION medtl.predict_topk(text, bytea, int) IS 'The k most probable labels of an image with their probabilities.';

-- mode => 'resize' (the default) scores the image resized to the model's
-- input size; mode => 'sliding' tiles it at its own resolution (times
-- scale) with overlap and blends the tiles' probabilities (blend constant
-- or gaussian), as MONAI's sliding_window_inference.
CREATE FUNCTION medtl.segment(model text, image bytea, mode text DEFAULT 'resize',
    overlap float8 DEFAULT 0.25, scale float8 DEFAULT 1.0, blend text DEFAULT 'constant') RETURNS bytea
    AS 'MODULE_PATHNAME', 'medtl_segment' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.segment(text, bytea, text, float8, float8, text) IS 'The predicted mask of an image as an 8-bit PNG at the image''s own size: 0/255 for a two-label model, else class indexes (0 = the first label). mode => ''sliding'' tiles the image (scaled by scale) in input-size tiles overlapping by overlap (0..0.9) and blends their probabilities (blend constant or gaussian) instead of resizing it to the input size.';

CREATE FUNCTION medtl.segment_proba(model text, image bytea, mode text DEFAULT 'resize',
    overlap float8 DEFAULT 0.25, scale float8 DEFAULT 1.0, blend text DEFAULT 'constant') RETURNS real[]
    AS 'MODULE_PATHNAME', 'medtl_segment_proba' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.segment_proba(text, bytea, text, float8, float8, text) IS 'Per-pixel probabilities at the image''s own size: [height][width] of the second class for a two-label model, else [class][height][width]; mode, overlap, scale and blend as for medtl.segment.';

------------------------------------------------------------------------------
-- Registering models
------------------------------------------------------------------------------

-- float4[] from a metadata value such as '[0.485, 0.456, 0.406]'; NULL if absent or malformed.
CREATE FUNCTION medtl._meta_floats(v text) RETURNS real[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF v IS NULL THEN RETURN NULL; END IF;
    RETURN ARRAY(SELECT e::real FROM jsonb_array_elements_text(v::jsonb) e);
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- Refuse to remove a model that an ensemble uses (clearer than the foreign key's error).
CREATE FUNCTION medtl._refuse_ensemble_member(model text, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM medtl.ensemble_members e JOIN medtl.models m ON m.model_id = e.member_id
                WHERE m.name = model) THEN
        RAISE EXCEPTION 'model "%" is a member of an ensemble%', model, what
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Drop the ensembles that use it first (medtl.ensemble_members).';
    END IF;
END
$$;

-- Make a model name available: delete the model of that name when replacing, else refuse.
CREATE FUNCTION medtl._free_name(model text, replace boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF replace THEN
        PERFORM medtl._refuse_ensemble_member(model, ' and cannot be replaced');
        DELETE FROM medtl.models m WHERE m.name = model;
    ELSIF EXISTS (SELECT 1 FROM medtl.models m WHERE m.name = model) THEN
        RAISE EXCEPTION 'model "%" already exists', model
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pass replace => true to replace it, or choose another name.';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl._free_name(text, boolean) IS 'Delete the model of a name when replacing, else raise if the name is taken.';

CREATE FUNCTION medtl.import_model(
    name text,
    arch text,
    weights bytea,
    labels text[] DEFAULT NULL,
    input_size int DEFAULT NULL,
    mean real[] DEFAULT NULL,
    std real[] DEFAULT NULL,
    padding text DEFAULT NULL,
    task text DEFAULT 'classification',
    source text DEFAULT NULL,
    replace boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    info jsonb;
    meta jsonb;
    ncls int;
    id bigint;
    v_mean real[];
    v_std real[];
    v_labels text[];
BEGIN
    IF name IS NULL OR arch IS NULL OR weights IS NULL THEN
        RAISE EXCEPTION 'name, arch and weights must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- parses and checks every tensor against the architecture
    info := medtl.safetensors_info(weights, arch);
    meta := info->'metadata';
    ncls := (info->>'num_classes')::int;

    v_labels := labels;
    IF v_labels IS NULL AND meta ? 'labels' THEN
        BEGIN
            v_labels := ARRAY(SELECT jsonb_array_elements_text((meta->>'labels')::jsonb));
        EXCEPTION WHEN others THEN
            v_labels := NULL;       -- a note, not a JSON list of labels
        END;
        IF cardinality(v_labels) IS DISTINCT FROM ncls THEN
            v_labels := NULL;
        END IF;
    END IF;
    IF v_labels IS NOT NULL AND cardinality(v_labels) <> ncls THEN
        RAISE EXCEPTION 'model has % classes but % labels were given', ncls, cardinality(v_labels)
            USING ERRCODE = 'data_exception',
                  HINT = format('The head tensor of %s has %s outputs; pass one label per output.', arch, ncls);
    END IF;

    v_mean := coalesce(mean, medtl._meta_floats(meta->>'mean'), '{0.485,0.456,0.406}');
    v_std := coalesce(std, medtl._meta_floats(meta->>'std'), '{0.229,0.224,0.225}');
    IF cardinality(v_mean) <> 3 OR cardinality(v_std) <> 3 OR NOT (0 < ALL (v_std)) THEN
        RAISE EXCEPTION 'mean and std must each have 3 values, std all positive'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    PERFORM medtl._free_name(import_model.name, replace);
    PERFORM medtl._check_input_size(arch, coalesce(input_size, (meta->>'input_size')::int, 224));

    INSERT INTO medtl.models (name, arch, task, labels, num_classes, input_size, mean, std,
                              padding, source, sha256, metadata)
    VALUES (import_model.name, import_model.arch, CASE WHEN import_model.arch ~ '^unet_' THEN 'segmentation' ELSE coalesce(task, 'classification') END, v_labels, ncls,
            coalesce(input_size, (meta->>'input_size')::int, 224), v_mean, v_std,
            coalesce(padding, meta->>'padding', 'symmetric'),
            coalesce(source, meta->>'source', 'import_model'),
            encode(sha256(weights), 'hex'), meta)
    RETURNING model_id INTO id;

    INSERT INTO medtl.weights (model_id, tensor, shape, dtype, data)
    SELECT id, w.tensor, w.shape, w.dtype, w.data FROM medtl._weight_rows(weights, arch) w;
    RETURN id;
END
$$;
COMMENT ON FUNCTION medtl.import_model(text, text, bytea, text[], int, real[], real[], text, text, text, boolean)
    IS 'Register a pretrained model from safetensors bytes or a PyTorch .pth checkpoint (torch.save zip, read without executing anything); every tensor is checked against the architecture and stored as a row.';

CREATE FUNCTION medtl.import_model_file(
    name text, arch text, path text,
    labels text[] DEFAULT NULL, input_size int DEFAULT NULL,
    mean real[] DEFAULT NULL, std real[] DEFAULT NULL, padding text DEFAULT NULL,
    task text DEFAULT 'classification', replace boolean DEFAULT false)
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT medtl.import_model(name, arch, medtl.read_server_file(path), labels, input_size,
                              mean, std, padding, task, 'file:' || path, replace)
$$;
COMMENT ON FUNCTION medtl.import_model_file(text, text, text, text[], int, real[], real[], text, text, boolean)
    IS 'import_model from a safetensors or .pth file on the server; needs the privileges of pg_read_server_files.';

CREATE FUNCTION medtl.share_model(model text, reader name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE medtl.models m SET readers = array_append(m.readers, reader)
     WHERE m.name = model AND NOT reader = ANY (m.readers);
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM medtl.models m
                                  WHERE m.name = model AND medtl._is_member(m.owner)) THEN
        RAISE EXCEPTION 'model "%" does not exist or is not yours', model
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl.share_model(text, name) IS 'Let a role (or ''public'') see and score one of your models.';

CREATE FUNCTION medtl.unshare_model(model text, reader name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE medtl.models m SET readers = array_remove(m.readers, reader)
     WHERE m.name = model AND medtl._is_member(m.owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist or is not yours', model
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl.unshare_model(text, name) IS 'Withdraw a role''s read access to one of your models.';

CREATE FUNCTION medtl.drop_model(model text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM medtl._refuse_ensemble_member(model, '');
    DELETE FROM medtl.models m WHERE m.name = model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist or is not yours', model
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl.drop_model(text) IS 'Delete one of your models and its weights.';

COMMENT ON FUNCTION medtl._model_touched() IS 'Trigger: bump generation on any change to a model row.';
COMMENT ON FUNCTION medtl._weights_changed() IS 'Trigger: bump the generation of models whose weights changed.';
COMMENT ON FUNCTION medtl._refuse_ensemble_member(text, text) IS 'Raise 2BP01 if an ensemble uses the model (what: the end of the message).';
COMMENT ON FUNCTION medtl._is_member(name) IS 'Whether the current user has the privileges of a role (false for unknown roles).';
COMMENT ON FUNCTION medtl._may_read(name, name[]) IS 'Row-level security: whether the current user may see a model.';
COMMENT ON FUNCTION medtl._meta_floats(text) IS 'Parse a JSON list of numbers from safetensors metadata.';

------------------------------------------------------------------------------
-- Metrics: aggregates usable with GROUP BY
------------------------------------------------------------------------------

CREATE FUNCTION medtl._auc_accum(internal, float8, boolean) RETURNS internal
    AS 'MODULE_PATHNAME', 'medtl_auc_accum' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION medtl._auc_final(internal) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_auc_final' LANGUAGE C PARALLEL SAFE;
CREATE AGGREGATE medtl.auc(score float8, positive boolean) (
    SFUNC = medtl._auc_accum, STYPE = internal, FINALFUNC = medtl._auc_final,
    PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.auc(float8, boolean) IS 'Exact area under the ROC curve of scores against a positive flag (ties count one half); NULL unless both classes occur.';
COMMENT ON FUNCTION medtl._auc_accum(internal, float8, boolean) IS 'Transition function of medtl.auc.';
COMMENT ON FUNCTION medtl._auc_final(internal) IS 'Final function of medtl.auc.';

------------------------------------------------------------------------------
-- Segmentation masks: Dice and IoU per pair and as aggregates (seg_metrics.c)
------------------------------------------------------------------------------
-- Foreground is a nonzero pixel (0/255 and 0/1 masks both work; above 127 in
-- a JPEG mask), or a pixel equal to class.  Both masks empty: empty_value.
-- An aggregate cannot share name and argument types with a function, so the
-- aggregate forms of dice and iou are mean_* (per-pair mean) and pooled_*
-- (one Dice/IoU over all pixels of all rows).

CREATE FUNCTION medtl.dice(predicted bytea, truth bytea, empty_value float8 DEFAULT 1.0,
                           class int DEFAULT NULL) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_dice' LANGUAGE C IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.dice(bytea, bytea, float8, int) IS 'Dice of two masks (PNG or JPEG), 2|P∩T| / (|P| + |T|); foreground is nonzero, or = class when given; empty_value (default 1, may be NULL) when both are empty, 0 when one is; NULL for a NULL mask.';
CREATE FUNCTION medtl.iou(predicted bytea, truth bytea, empty_value float8 DEFAULT 1.0,
                          class int DEFAULT NULL) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_iou' LANGUAGE C IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.iou(bytea, bytea, float8, int) IS 'IoU (Jaccard) of two masks (PNG or JPEG), |P∩T| / |P∪T|; foreground is nonzero, or = class when given; empty_value (default 1, may be NULL) when both are empty, 0 when one is; NULL for a NULL mask.';

CREATE FUNCTION medtl._seg_accum(internal, bytea, bytea) RETURNS internal
    AS 'MODULE_PATHNAME', 'medtl_seg_accum' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION medtl._seg_accum(internal, bytea, bytea, float8) RETURNS internal
    AS 'MODULE_PATHNAME', 'medtl_seg_accum' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION medtl._seg_accum(internal, bytea, bytea, float8, int) RETURNS internal
    AS 'MODULE_PATHNAME', 'medtl_seg_accum' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION medtl._seg_combine(internal, internal) RETURNS internal
    AS 'MODULE_PATHNAME', 'medtl_seg_combine' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION medtl._seg_serialize(internal) RETURNS bytea
    AS 'MODULE_PATHNAME', 'medtl_seg_serialize' LANGUAGE C STRICT PARALLEL SAFE;
CREATE FUNCTION medtl._seg_deserialize(bytea, internal) RETURNS internal
    AS 'MODULE_PATHNAME', 'medtl_seg_deserialize' LANGUAGE C STRICT PARALLEL SAFE;
CREATE FUNCTION medtl._mean_dice_final(internal) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_mean_dice_final' LANGUAGE C PARALLEL SAFE;
CREATE FUNCTION medtl._pooled_dice_final(internal) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_pooled_dice_final' LANGUAGE C PARALLEL SAFE;
CREATE FUNCTION medtl._mean_iou_final(internal) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_mean_iou_final' LANGUAGE C PARALLEL SAFE;
CREATE FUNCTION medtl._pooled_iou_final(internal) RETURNS float8
    AS 'MODULE_PATHNAME', 'medtl_pooled_iou_final' LANGUAGE C PARALLEL SAFE;
COMMENT ON FUNCTION medtl._seg_accum(internal, bytea, bytea) IS 'Transition function of the mask metric aggregates.';
COMMENT ON FUNCTION medtl._seg_accum(internal, bytea, bytea, float8) IS 'Transition function of the mask metric aggregates.';
COMMENT ON FUNCTION medtl._seg_accum(internal, bytea, bytea, float8, int) IS 'Transition function of the mask metric aggregates.';
COMMENT ON FUNCTION medtl._seg_combine(internal, internal) IS 'Combine function of the mask metric aggregates (parallel aggregation).';
COMMENT ON FUNCTION medtl._seg_serialize(internal) IS 'Serialise the state of the mask metric aggregates.';
COMMENT ON FUNCTION medtl._seg_deserialize(bytea, internal) IS 'Deserialise the state of the mask metric aggregates.';
COMMENT ON FUNCTION medtl._mean_dice_final(internal) IS 'Final function of medtl.mean_dice.';
COMMENT ON FUNCTION medtl._pooled_dice_final(internal) IS 'Final function of medtl.pooled_dice.';
COMMENT ON FUNCTION medtl._mean_iou_final(internal) IS 'Final function of medtl.mean_iou.';
COMMENT ON FUNCTION medtl._pooled_iou_final(internal) IS 'Final function of medtl.pooled_iou.';

CREATE AGGREGATE medtl.mean_dice(predicted bytea, truth bytea) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._mean_dice_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.mean_dice(bytea, bytea) IS 'Mean of per-pair Dice of masks (foreground: nonzero, or = class); pairs whose masks are both empty count as empty_value (default 1; NULL skips them); rows with a NULL mask are skipped; NULL when no pair counts.';
CREATE AGGREGATE medtl.mean_dice(predicted bytea, truth bytea, empty_value float8) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._mean_dice_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.mean_dice(bytea, bytea, float8) IS 'Mean of per-pair Dice of masks (foreground: nonzero, or = class); pairs whose masks are both empty count as empty_value (default 1; NULL skips them); rows with a NULL mask are skipped; NULL when no pair counts.';
CREATE AGGREGATE medtl.mean_dice(predicted bytea, truth bytea, empty_value float8, class int) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._mean_dice_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.mean_dice(bytea, bytea, float8, int) IS 'Mean of per-pair Dice of masks (foreground: nonzero, or = class); pairs whose masks are both empty count as empty_value (default 1; NULL skips them); rows with a NULL mask are skipped; NULL when no pair counts.';
CREATE AGGREGATE medtl.pooled_dice(predicted bytea, truth bytea) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._pooled_dice_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.pooled_dice(bytea, bytea) IS 'Pooled (global) Dice, 2 sum|P∩T| / sum(|P| + |T|) over all rows of masks (foreground: nonzero, or = class); empty_value (default 1) when every mask is empty; rows with a NULL mask are skipped; NULL without rows.';
CREATE AGGREGATE medtl.pooled_dice(predicted bytea, truth bytea, empty_value float8) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._pooled_dice_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.pooled_dice(bytea, bytea, float8) IS 'Pooled (global) Dice, 2 sum|P∩T| / sum(|P| + |T|) over all rows of masks (foreground: nonzero, or = class); empty_value (default 1) when every mask is empty; rows with a NULL mask are skipped; NULL without rows.';
CREATE AGGREGATE medtl.pooled_dice(predicted bytea, truth bytea, empty_value float8, class int) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._pooled_dice_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.pooled_dice(bytea, bytea, float8, int) IS 'Pooled (global) Dice, 2 sum|P∩T| / sum(|P| + |T|) over all rows of masks (foreground: nonzero, or = class); empty_value (default 1) when every mask is empty; rows with a NULL mask are skipped; NULL without rows.';
CREATE AGGREGATE medtl.mean_iou(predicted bytea, truth bytea) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._mean_iou_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.mean_iou(bytea, bytea) IS 'Mean of per-pair IoU of masks (foreground: nonzero, or = class); pairs whose masks are both empty count as empty_value (default 1; NULL skips them); rows with a NULL mask are skipped; NULL when no pair counts.';
CREATE AGGREGATE medtl.mean_iou(predicted bytea, truth bytea, empty_value float8) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._mean_iou_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.mean_iou(bytea, bytea, float8) IS 'Mean of per-pair IoU of masks (foreground: nonzero, or = class); pairs whose masks are both empty count as empty_value (default 1; NULL skips them); rows with a NULL mask are skipped; NULL when no pair counts.';
CREATE AGGREGATE medtl.mean_iou(predicted bytea, truth bytea, empty_value float8, class int) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._mean_iou_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.mean_iou(bytea, bytea, float8, int) IS 'Mean of per-pair IoU of masks (foreground: nonzero, or = class); pairs whose masks are both empty count as empty_value (default 1; NULL skips them); rows with a NULL mask are skipped; NULL when no pair counts.';
CREATE AGGREGATE medtl.pooled_iou(predicted bytea, truth bytea) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._pooled_iou_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.pooled_iou(bytea, bytea) IS 'Pooled (global) IoU, sum|P∩T| / sum|P∪T| over all rows of masks (foreground: nonzero, or = class); empty_value (default 1) when every mask is empty; rows with a NULL mask are skipped; NULL without rows.';
CREATE AGGREGATE medtl.pooled_iou(predicted bytea, truth bytea, empty_value float8) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._pooled_iou_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.pooled_iou(bytea, bytea, float8) IS 'Pooled (global) IoU, sum|P∩T| / sum|P∪T| over all rows of masks (foreground: nonzero, or = class); empty_value (default 1) when every mask is empty; rows with a NULL mask are skipped; NULL without rows.';
CREATE AGGREGATE medtl.pooled_iou(predicted bytea, truth bytea, empty_value float8, class int) (
    SFUNC = medtl._seg_accum, STYPE = internal, FINALFUNC = medtl._pooled_iou_final,
    COMBINEFUNC = medtl._seg_combine, SERIALFUNC = medtl._seg_serialize,
    DESERIALFUNC = medtl._seg_deserialize, PARALLEL = SAFE);
COMMENT ON AGGREGATE medtl.pooled_iou(bytea, bytea, float8, int) IS 'Pooled (global) IoU, sum|P∩T| / sum|P∪T| over all rows of masks (foreground: nonzero, or = class); empty_value (default 1) when every mask is empty; rows with a NULL mask are skipped; NULL without rows.';

CREATE FUNCTION medtl.mask_png(pixels int[]) RETURNS bytea
    AS 'MODULE_PATHNAME', 'medtl_mask_png' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.mask_png(int[]) IS 'An 8-bit gray PNG mask from a 2-D array of rows of pixel values 0..255 (a 1-D array is one row).';
CREATE FUNCTION medtl.mask_pixels(mask bytea) RETURNS int[]
    AS 'MODULE_PATHNAME', 'medtl_mask_pixels' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.mask_pixels(bytea) IS 'The values of a decoded mask as a 2-D array (rows of pixels), as the metrics and training read them.';
CREATE FUNCTION medtl.mask_info(mask bytea,
    OUT format text, OUT width int, OUT height int, OUT foreground bigint, OUT distinct_values int[])
    AS 'MODULE_PATHNAME', 'medtl_mask_info' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.mask_info(bytea) IS 'A decoded mask: format, size, foreground pixels (nonzero; above 127 for JPEG) and the distinct values it holds.';

------------------------------------------------------------------------------
-- Training runs and evaluations as data
------------------------------------------------------------------------------

CREATE TABLE medtl.runs (
    run_id      bigserial PRIMARY KEY,
    model_id    bigint NOT NULL REFERENCES medtl.models (model_id) ON DELETE CASCADE,
    source      text NOT NULL,
    params      jsonb NOT NULL DEFAULT '{}',
    resolved    jsonb NOT NULL DEFAULT '{}',
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    n_train     int,
    n_val       int,
    seed        bigint,
    owner       name NOT NULL DEFAULT current_user,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    seconds     float8
);
COMMENT ON TABLE medtl.runs IS 'One row per training run: model, source, parameters as given and as resolved, row counts, status, timing.';

CREATE TABLE medtl.epochs (
    run_id          bigint NOT NULL REFERENCES medtl.runs (run_id) ON DELETE CASCADE,
    phase           int NOT NULL DEFAULT 1,
    epoch           int NOT NULL,
    lr              float8,
    train_loss      float8,
    train_accuracy  float8,
    val_loss        float8,
    val_accuracy    float8,
    val_auc         float8,
    seconds         float8,
    val_dice        float8,
    PRIMARY KEY (run_id, phase, epoch)
);
COMMENT ON TABLE medtl.epochs IS 'One row per epoch and phase of a run: learning rate, training and validation metrics, time.';
COMMENT ON COLUMN medtl.epochs.val_dice IS 'Segmentation: mean Dice per validation image (its accuracies are pixel accuracies).';

CREATE TABLE medtl.evaluations (
    evaluation_id     bigserial PRIMARY KEY,
    model_id          bigint NOT NULL REFERENCES medtl.models (model_id) ON DELETE CASCADE,
    source            text NOT NULL,
    n                 int NOT NULL,
    positive_label    text,
    accuracy          float8,
    balanced_accuracy float8,
    auc               float8,
    f1                float8,
    f1_macro          float8,
    precision         float8,
    recall            float8,
    specificity       float8,
    log_loss          float8,
    dice              float8,
    iou               float8,
    owner             name NOT NULL DEFAULT current_user,
    created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE medtl.evaluations IS 'One row per evaluation of a model on a labelled set; binary metrics are of positive_label, multi-class ones macro averages.';

CREATE TABLE medtl.confusion (
    evaluation_id   bigint NOT NULL REFERENCES medtl.evaluations (evaluation_id) ON DELETE CASCADE,
    truth_index     int NOT NULL,
    predicted_index int NOT NULL,
    truth           text NOT NULL,
    predicted       text NOT NULL,
    n               int NOT NULL,
    PRIMARY KEY (evaluation_id, truth_index, predicted_index)
);
COMMENT ON TABLE medtl.confusion IS 'Confusion matrix of an evaluation, one row per (truth, predicted) pair (0-based class indexes); every cell up to 32 classes, only non-empty cells beyond.';

CREATE TABLE medtl.roc_points (
    evaluation_id bigint NOT NULL REFERENCES medtl.evaluations (evaluation_id) ON DELETE CASCADE,
    class_index   int NOT NULL,
    class         text NOT NULL,
    threshold     float8 NOT NULL,
    fpr           float8 NOT NULL,
    tpr           float8 NOT NULL
);
CREATE INDEX ON medtl.roc_points (evaluation_id, class_index);
COMMENT ON TABLE medtl.roc_points IS 'ROC curve points (one-vs-rest per class; the positive class for binary models); threshold +Infinity is the (0, 0) corner.';

CREATE TABLE medtl.class_metrics (
    evaluation_id bigint NOT NULL REFERENCES medtl.evaluations (evaluation_id) ON DELETE CASCADE,
    class_index   int NOT NULL,
    class         text NOT NULL,
    support       int NOT NULL,
    precision     float8,
    recall        float8,
    f1            float8,
    specificity   float8,
    auc           float8,
    PRIMARY KEY (evaluation_id, class_index)
);
COMMENT ON TABLE medtl.class_metrics IS 'Per-class metrics of an evaluation (one-vs-rest).';

CREATE TABLE medtl.image_metrics (
    evaluation_id    bigint NOT NULL REFERENCES medtl.evaluations (evaluation_id) ON DELETE CASCADE,
    row_number       bigint NOT NULL,
    width            int NOT NULL,
    height           int NOT NULL,
    dice             float8,
    iou              float8,
    pixel_accuracy   float8 NOT NULL,
    truth_pixels     bigint NOT NULL,
    predicted_pixels bigint NOT NULL,
    PRIMARY KEY (evaluation_id, row_number)
);
COMMENT ON TABLE medtl.image_metrics IS 'Segmentation evaluations: one row per image (row_number in the source''s order); Dice and IoU averaged over the foreground classes, pixel counts of the foreground.';

SELECT pg_catalog.pg_extension_config_dump('medtl.runs', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.epochs', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.evaluations', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.evaluations_evaluation_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.confusion', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.roc_points', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.class_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('medtl.image_metrics', '');

-- Runs and evaluations are visible with their model; written by its owner side.
ALTER TABLE medtl.runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY runs_read ON medtl.runs FOR SELECT
    USING (EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = runs.model_id));
CREATE POLICY runs_write ON medtl.runs FOR ALL
    USING (medtl._is_member(owner)) WITH CHECK (medtl._is_member(owner));
ALTER TABLE medtl.evaluations ENABLE ROW LEVEL SECURITY;
CREATE POLICY evaluations_read ON medtl.evaluations FOR SELECT
    USING (EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = evaluations.model_id));
-- anyone who may score a model may evaluate it and keep the result
CREATE POLICY evaluations_write ON medtl.evaluations FOR ALL
    USING (medtl._is_member(owner))
    WITH CHECK (medtl._is_member(owner)
                AND EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = evaluations.model_id));
ALTER TABLE medtl.epochs ENABLE ROW LEVEL SECURITY;
CREATE POLICY epochs_all ON medtl.epochs FOR ALL
    USING (EXISTS (SELECT 1 FROM medtl.runs r WHERE r.run_id = epochs.run_id))
    WITH CHECK (EXISTS (SELECT 1 FROM medtl.runs r WHERE r.run_id = epochs.run_id AND medtl._is_member(r.owner)));
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['confusion', 'roc_points', 'class_metrics', 'image_metrics'] LOOP
        EXECUTE format('ALTER TABLE medtl.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON medtl.%I FOR ALL
            USING (EXISTS (SELECT 1 FROM medtl.evaluations e WHERE e.evaluation_id = %I.evaluation_id))
            WITH CHECK (EXISTS (SELECT 1 FROM medtl.evaluations e
                                 WHERE e.evaluation_id = %I.evaluation_id AND medtl._is_member(e.owner)))',
                       t || '_all', t, t, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON medtl.runs, medtl.epochs, medtl.evaluations,
    medtl.confusion, medtl.roc_points, medtl.class_metrics, medtl.image_metrics TO PUBLIC;
GRANT USAGE ON SEQUENCE medtl.runs_run_id_seq, medtl.evaluations_evaluation_id_seq TO PUBLIC;

------------------------------------------------------------------------------
-- Evaluation
------------------------------------------------------------------------------

-- The FROM item for a source: a query in parentheses, or a table/view name.
CREATE FUNCTION medtl._source_from(source text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF source ~* '^\s*\(?\s*(select|with|values|table)\M' THEN
        RETURN '(' || source || ')';
    END IF;
    RETURN source::regclass::text;
END
$$;
COMMENT ON FUNCTION medtl._source_from(text) IS 'Turn a source (a query, or a table or view name) into a FROM item.';

-- 1-based index of the largest element (the first on ties).
CREATE FUNCTION medtl._argmax(v real[]) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT i::int FROM unnest(v) WITH ORDINALITY u(x, i) ORDER BY x DESC, i LIMIT 1
$$;
COMMENT ON FUNCTION medtl._argmax(real[]) IS '1-based index of the largest element, the first on ties.';

CREATE FUNCTION medtl._score_source(model text, source text, image_column text, label_column text,
    skip_bad_rows boolean, OUT label text, OUT truth int, OUT p real[])
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'medtl_score_source' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION medtl._score_source(text, text, text, text, boolean) IS 'Class probabilities of the labelled rows of a source, scored in batches (used by evaluate).';

CREATE FUNCTION medtl._segment_source(model text, source text, image_column text, mask_column text,
    skip_bad_rows boolean, mode text, overlap float8, scale float8, blend text, OUT row_number bigint, OUT width int, OUT height int, OUT pixels bigint,
    OUT correct bigint, OUT tp bigint[], OUT fp bigint[], OUT fn bigint[])
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'medtl_segment_source' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION medtl._segment_source(text, text, text, text, boolean, text, float8, float8, text) IS 'Per image of a source with masks: the predicted mask (scored as medtl.segment with mode, overlap, scale and blend) against the truth at the truth''s size, pixel counts per class (used by evaluate).';

-- evaluate() of a segmentation model.  Per image: Dice = 2 TP / (2 TP + FP +
-- FN) and IoU = TP / (TP + FP + FN) of each foreground class (every class
-- but the first label), averaged over those classes; a class absent from
-- both the truth and the prediction scores empty_dice (1 by default, NULL
-- to leave such images out of the means).  The evaluation's dice and iou
-- are the means over images; f1 is the pooled (global) Dice over all pixels;
-- accuracy is pixel accuracy; precision, recall (sensitivity) and
-- specificity are pooled over pixels (macro over foreground classes).
CREATE FUNCTION medtl._evaluate_segmentation(m medtl.models, source text, image_column text,
    mask_column text, skip_bad_rows boolean, empty_dice float8, mode text, overlap float8,
    scale float8, blend text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k int := m.num_classes;
    labels text[] := coalesce(m.labels, ARRAY(SELECT g::text FROM generate_series(0, m.num_classes - 1) g));
    eid bigint;
    n_rows bigint;
BEGIN
    IF to_regclass('pg_temp._medtl_seg') IS NOT NULL THEN
        DROP TABLE pg_temp._medtl_seg;
    END IF;
    CREATE TEMP TABLE _medtl_seg AS
    SELECT * FROM medtl._segment_source(m.name,
               format('SELECT * FROM %s t WHERE t.%I IS NOT NULL', medtl._source_from(source), mask_column),
               image_column, mask_column, skip_bad_rows, mode, overlap, scale, blend);
    GET DIAGNOSTICS n_rows = ROW_COUNT;

    INSERT INTO medtl.evaluations (model_id, source, n, positive_label)
    VALUES (m.model_id, source, n_rows, CASE WHEN k = 2 THEN labels[2] END)
    RETURNING evaluation_id INTO eid;

    INSERT INTO medtl.image_metrics (evaluation_id, row_number, width, height, dice, iou,
                                     pixel_accuracy, truth_pixels, predicted_pixels)
    SELECT eid, s.row_number, s.width, s.height,
           (SELECT avg(CASE WHEN s.tp[c] + s.fp[c] + s.fn[c] = 0 THEN empty_dice
                            ELSE 2.0 * s.tp[c] / (2 * s.tp[c] + s.fp[c] + s.fn[c]) END)
              FROM generate_series(2, k) c),
           (SELECT avg(CASE WHEN s.tp[c] + s.fp[c] + s.fn[c] = 0 THEN empty_dice
                            ELSE s.tp[c]::float8 / (s.tp[c] + s.fp[c] + s.fn[c]) END)
              FROM generate_series(2, k) c),
           s.correct::float8 / s.pixels,
           (SELECT sum(s.tp[c] + s.fn[c]) FROM generate_series(2, k) c),
           (SELECT sum(s.tp[c] + s.fp[c]) FROM generate_series(2, k) c)
      FROM pg_temp._medtl_seg s;

    -- per class, pooled over every pixel; support: images where the class occurs
    INSERT INTO medtl.class_metrics (evaluation_id, class_index, class, support, precision, recall, f1, specificity)
    SELECT eid, c - 1, labels[c], x.support,
           x.tp / nullif(x.tp + x.fp, 0), x.tp / nullif(x.tp + x.fn, 0),
           2 * x.tp / nullif(2 * x.tp + x.fp + x.fn, 0),
           (x.px - x.tp - x.fp - x.fn) / nullif(x.px - x.tp - x.fn, 0)
      FROM generate_series(1, k) c,
           LATERAL (SELECT count(*) FILTER (WHERE s.tp[c] + s.fn[c] > 0)::int AS support,
                           sum(s.tp[c])::float8 AS tp, sum(s.fp[c])::float8 AS fp,
                           sum(s.fn[c])::float8 AS fn, sum(s.pixels)::float8 AS px
                      FROM pg_temp._medtl_seg s) x;

    UPDATE medtl.evaluations v SET
        accuracy = (SELECT sum(s.correct)::float8 / nullif(sum(s.pixels), 0) FROM pg_temp._medtl_seg s),
        balanced_accuracy = (SELECT avg(cm.recall) FROM medtl.class_metrics cm
                              WHERE cm.evaluation_id = eid AND cm.support > 0),
        dice = (SELECT avg(i.dice) FROM medtl.image_metrics i WHERE i.evaluation_id = eid),
        iou = (SELECT avg(i.iou) FROM medtl.image_metrics i WHERE i.evaluation_id = eid),
        f1 = c.f1, f1_macro = c.f1, precision = c.prec, recall = c.rec, specificity = c.spec
      FROM (SELECT avg(cm.f1) AS f1, avg(cm.precision) AS prec, avg(cm.recall) AS rec,
                   avg(cm.specificity) AS spec
              FROM medtl.class_metrics cm WHERE cm.evaluation_id = eid AND cm.class_index > 0) c
     WHERE v.evaluation_id = eid;
    DROP TABLE pg_temp._medtl_seg;
    RETURN eid;
END
$$;
COMMENT ON FUNCTION medtl._evaluate_segmentation(medtl.models, text, text, text, boolean, float8, text, float8, float8, text) IS 'evaluate() of a segmentation model.';

CREATE FUNCTION medtl.evaluate(
    model text,
    source text,
    image_column text DEFAULT 'image',
    label_column text DEFAULT 'label',
    positive text DEFAULT NULL,
    skip_bad_rows boolean DEFAULT false,
    mask_column text DEFAULT 'mask',
    empty_dice float8 DEFAULT 1.0,
    mode text DEFAULT 'resize',
    overlap float8 DEFAULT 0.25,
    scale float8 DEFAULT 1.0,
    blend text DEFAULT 'constant')
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m medtl.models;
    labels text[];
    k int;
    pos int;
    n_rows bigint;
    eid bigint;
BEGIN
    SELECT * INTO m FROM medtl.models WHERE name = model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
    END IF;
    IF mode IS NULL OR overlap IS NULL OR scale IS NULL OR blend IS NULL THEN
        RAISE EXCEPTION 'mode, overlap, scale and blend must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF m.task = 'segmentation' THEN
        RETURN medtl._evaluate_segmentation(m, source, image_column, mask_column, skip_bad_rows, empty_dice,
                                            mode, overlap, scale, blend);
    END IF;
    IF mode <> 'resize' OR scale <> 1.0 OR blend <> 'constant' THEN
        RAISE EXCEPTION 'mode, scale and blend apply to segmentation models; "%" is a % model', model, m.task
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    labels := coalesce(m.labels, ARRAY(SELECT g::text FROM generate_series(0, m.num_classes - 1) g));
    k := cardinality(labels);
    IF positive IS NOT NULL THEN
        pos := array_position(labels, positive);
        IF pos IS NULL THEN
            RAISE EXCEPTION 'positive label "%" is not a label of model "%"', positive, model
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSIF k = 2 THEN
        pos := 2;
    END IF;

    IF to_regclass('pg_temp._medtl_eval') IS NOT NULL THEN
        DROP TABLE pg_temp._medtl_eval;
    END IF;
    CREATE TEMP TABLE _medtl_eval (label text, truth int, p real[]);
    -- rows without a label are left out; bad images and unknown labels are errors naming the row
    IF m.arch = 'ensemble' THEN
        -- the members' averaged probabilities, row by row
        EXECUTE format('INSERT INTO pg_temp._medtl_eval
                        SELECT t.%I::text, array_position($1, t.%I::text), medtl.predict_proba($2, t.%I)
                          FROM %s t WHERE t.%I IS NOT NULL',
                       label_column, label_column, image_column, medtl._source_from(source), label_column)
            USING labels, model;
        GET DIAGNOSTICS n_rows = ROW_COUNT;
        IF EXISTS (SELECT 1 FROM pg_temp._medtl_eval WHERE truth IS NULL) THEN
            RAISE EXCEPTION 'the source has label "%", which model "%" does not have',
                (SELECT e.label FROM pg_temp._medtl_eval e WHERE e.truth IS NULL LIMIT 1), model
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSE
        INSERT INTO pg_temp._medtl_eval
        SELECT s.label, s.truth, s.p
          FROM medtl._score_source(model,
                   format('SELECT * FROM %s t WHERE t.%I IS NOT NULL', medtl._source_from(source), label_column),
                   image_column, label_column, skip_bad_rows) s;
        GET DIAGNOSTICS n_rows = ROW_COUNT;
    END IF;

    ALTER TABLE pg_temp._medtl_eval ADD COLUMN pred int;
    UPDATE pg_temp._medtl_eval SET pred = medtl._argmax(p);

    INSERT INTO medtl.evaluations (model_id, source, n, positive_label)
    VALUES (m.model_id, source, n_rows, labels[pos])
    RETURNING evaluation_id INTO eid;

    IF k <= 32 THEN
        INSERT INTO medtl.confusion (evaluation_id, truth_index, predicted_index, truth, predicted, n)
        SELECT eid, t - 1, q - 1, labels[t], labels[q], count(e.label)::int
          FROM generate_series(1, k) t CROSS JOIN generate_series(1, k) q
          LEFT JOIN pg_temp._medtl_eval e ON e.truth = t AND e.pred = q
         GROUP BY t, q;
    ELSE
        INSERT INTO medtl.confusion (evaluation_id, truth_index, predicted_index, truth, predicted, n)
        SELECT eid, truth - 1, pred - 1, labels[truth], labels[pred], count(*)::int
          FROM pg_temp._medtl_eval GROUP BY truth, pred;
    END IF;

    INSERT INTO medtl.class_metrics (evaluation_id, class_index, class, support, precision, recall, f1, specificity, auc)
    SELECT eid, c - 1, labels[c], s.support,
           s.tp::float8 / nullif(s.tp + s.fp, 0),
           s.tp::float8 / nullif(s.tp + s.fn, 0),
           2.0 * s.tp / nullif(2 * s.tp + s.fp + s.fn, 0),
           s.tn::float8 / nullif(s.tn + s.fp, 0),
           s.auc
      FROM generate_series(1, k) c,
           LATERAL (SELECT count(*) FILTER (WHERE truth = c)::int AS support,
                           count(*) FILTER (WHERE truth = c AND pred = c) AS tp,
                           count(*) FILTER (WHERE truth <> c AND pred = c) AS fp,
                           count(*) FILTER (WHERE truth = c AND pred <> c) AS fn,
                           count(*) FILTER (WHERE truth <> c AND pred <> c) AS tn,
                           medtl.auc(p[c], truth = c) AS auc
                      FROM pg_temp._medtl_eval) s;

    -- ROC curves of the positive class (binary) or of every class that occurs
    INSERT INTO medtl.roc_points (evaluation_id, class_index, class, threshold, fpr, tpr)
    SELECT eid, c - 1, labels[c], 'Infinity', 0, 0
      FROM generate_series(1, k) c
     WHERE (pos IS NULL OR c = pos) AND EXISTS (SELECT 1 FROM pg_temp._medtl_eval WHERE truth = c)
    UNION ALL
    SELECT eid, c - 1, labels[c], g.score,
           sum(g.fp) OVER w / nullif(sum(g.fp) OVER (PARTITION BY c), 0),
           sum(g.tp) OVER w / nullif(sum(g.tp) OVER (PARTITION BY c), 0)
      FROM (SELECT c, p[c]::float8 AS score,
                   count(*) FILTER (WHERE truth = c)::float8 AS tp,
                   count(*) FILTER (WHERE truth <> c)::float8 AS fp
              FROM pg_temp._medtl_eval, generate_series(1, k) c
             WHERE (pos IS NULL OR c = pos) AND c IN (SELECT truth FROM pg_temp._medtl_eval)
             GROUP BY c, p[c]) g
    WINDOW w AS (PARTITION BY c ORDER BY g.score DESC);

    UPDATE medtl.evaluations v SET
        accuracy = x.accuracy,
        balanced_accuracy = x.balanced_accuracy,
        log_loss = x.log_loss,
        auc = CASE WHEN pos IS NOT NULL THEN (SELECT cm.auc FROM medtl.class_metrics cm
                                              WHERE cm.evaluation_id = eid AND cm.class_index = pos - 1)
                   ELSE (SELECT avg(cm.auc) FROM medtl.class_metrics cm WHERE cm.evaluation_id = eid) END,
        f1_macro = (SELECT avg(coalesce(cm.f1, 0)) FROM medtl.class_metrics cm
                     WHERE cm.evaluation_id = eid AND cm.support > 0),
        f1 = x.f1, precision = x.prec, recall = x.rec, specificity = x.spec
      FROM (SELECT avg((truth = pred)::int)::float8 AS accuracy,
                   (SELECT avg(cm.recall) FROM medtl.class_metrics cm
                     WHERE cm.evaluation_id = eid AND cm.support > 0) AS balanced_accuracy,
                   avg(-ln(greatest(p[truth], 1e-15)::float8)) AS log_loss,
                   (SELECT CASE WHEN pos IS NOT NULL THEN max(cm.f1) FILTER (WHERE cm.class_index = pos - 1)
                                ELSE avg(coalesce(cm.f1, 0)) END
                      FROM medtl.class_metrics cm WHERE cm.evaluation_id = eid AND (pos IS NOT NULL OR cm.support > 0)) AS f1,
                   (SELECT CASE WHEN pos IS NOT NULL THEN max(cm.precision) FILTER (WHERE cm.class_index = pos - 1)
                                ELSE avg(coalesce(cm.precision, 0)) END
                      FROM medtl.class_metrics cm WHERE cm.evaluation_id = eid AND (pos IS NOT NULL OR cm.support > 0)) AS prec,
                   (SELECT CASE WHEN pos IS NOT NULL THEN max(cm.recall) FILTER (WHERE cm.class_index = pos - 1)
                                ELSE avg(cm.recall) END
                      FROM medtl.class_metrics cm WHERE cm.evaluation_id = eid AND (pos IS NOT NULL OR cm.support > 0)) AS rec,
                   (SELECT CASE WHEN pos IS NOT NULL THEN max(cm.specificity) FILTER (WHERE cm.class_index = pos - 1)
                                ELSE avg(cm.specificity) END
                      FROM medtl.class_metrics cm WHERE cm.evaluation_id = eid AND (pos IS NOT NULL OR cm.support > 0)) AS spec
              FROM pg_temp._medtl_eval) x
     WHERE v.evaluation_id = eid;
    DROP TABLE pg_temp._medtl_eval;
    RETURN eid;
END
$$;
COMMENT ON FUNCTION medtl.evaluate(text, text, text, text, text, boolean, text, float8, text, float8, float8, text) IS 'Score a labelled set (a table name or a query); accuracy, AUC, F1, precision, recall, specificity, log loss, confusion matrix, ROC points and per-class metrics become rows; for a segmentation model (masks in mask_column) mean Dice and IoU, pixel accuracy, sensitivity, specificity and one medtl.image_metrics row per image, the images scored as medtl.segment scores them with mode, overlap, scale and blend. Returns the evaluation id.';

------------------------------------------------------------------------------
-- Training
------------------------------------------------------------------------------

CREATE FUNCTION medtl._train_run(
    run_id bigint, model text, source text, image_column text, label_column text,
    group_column text, validation_source text, phase int, epochs int, batch_size int,
    lr float8, optimizer text, weight_decay float8, momentum float8, schedule text,
    warmup_epochs int, step_size int, gamma float8, freeze text,
    flip boolean, rotation float8, brightness float8, contrast float8, crop_scale float8,
    class_weights text, class_weight real[], focal_gamma float8, label_smoothing float8,
    validation float8, keep_best text, patience int, seed bigint, skip_bad_rows boolean,
    batch_norm text, segmentation_loss text, ema float8, dropout float8, head_lr_scale float8)
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'medtl_train_run' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION medtl._train_run(bigint, text, text, text, text, text, text, int, int, int, float8, text, float8, float8, text, int, int, float8, text, boolean, float8, float8, float8, float8, text, real[], float8, float8, float8, text, int, bigint, boolean, text, text, float8, float8, float8)
    IS 'One phase of a training run (called by medtl.train and medtl.fine_tune); for a segmentation model label_column is the mask column and segmentation_loss the loss.';

CREATE FUNCTION medtl._check_augment(flip boolean, rotation float8, brightness float8, contrast float8, crop_scale float8)
RETURNS void
    AS 'MODULE_PATHNAME', 'medtl_check_augment' LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION medtl._check_augment(boolean, float8, float8, float8, float8) IS 'Raise unless the augmentation options are given and in range (rotation 0..180 degrees, brightness and contrast 0..1, crop_scale above 0 and at most 1).';

-- Check the training options shared by train() and fine_tune(); raise on nonsense.
CREATE FUNCTION medtl._check_train_options(
    epochs int, batch_size int, lr float8, optimizer text, schedule text,
    class_weights text, loss text, validation float8, keep_best text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF epochs IS NULL OR epochs < 1 OR epochs > 100000 THEN
        RAISE EXCEPTION 'epochs must be between 1 and 100000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 4096 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 4096' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lr IS NULL OR NOT (lr > 0 AND lr < 100) THEN
        RAISE EXCEPTION 'lr must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF optimizer NOT IN ('sgd', 'adam', 'adamw') THEN
        RAISE EXCEPTION 'optimizer must be sgd, adam or adamw, not "%"', optimizer
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF schedule NOT IN ('constant', 'step', 'cosine') THEN
        RAISE EXCEPTION 'schedule must be constant, step or cosine, not "%"', schedule
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF class_weights NOT IN ('none', 'balanced') THEN
        RAISE EXCEPTION 'class_weights must be none or balanced (or give class_weight real[]), not "%"', class_weights
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF loss NOT IN ('cross_entropy', 'focal', 'dice', 'cross_entropy+dice') THEN
        RAISE EXCEPTION 'loss must be cross_entropy or focal (segmentation: cross_entropy, dice or cross_entropy+dice), not "%"', loss
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF validation IS NULL OR validation < 0 OR validation > 0.9 THEN
        RAISE EXCEPTION 'validation must be a fraction between 0 and 0.9' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF keep_best IS NOT NULL AND keep_best NOT IN ('val_auc', 'val_accuracy', 'val_loss', 'val_dice', 'none') THEN
        RAISE EXCEPTION 'keep_best must be val_auc, val_accuracy, val_loss, val_dice or none, not "%"', keep_best
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl._check_train_options(int, int, float8, text, text, text, text, float8, text) IS 'Validate training options.';

-- The head's learning-rate multiplier (train's head_lr_scale, fine_tune's for its phase 2).
CREATE FUNCTION medtl._check_head_lr_scale(head_lr_scale float8) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF head_lr_scale IS NULL OR NOT (head_lr_scale > 0 AND head_lr_scale <= 1000) THEN
        RAISE EXCEPTION 'head_lr_scale must be above 0 and at most 1000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl._check_head_lr_scale(float8) IS 'Validate the head''s learning-rate multiplier.';

CREATE FUNCTION medtl._check_warmup(warmup_epochs int, epochs int) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF warmup_epochs IS NULL OR warmup_epochs < 0 OR warmup_epochs > greatest(epochs, 0) THEN
        RAISE EXCEPTION 'warmup_epochs must be between 0 and epochs (%), got %', epochs, coalesce(warmup_epochs::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION medtl._check_warmup(int, int) IS 'Validate a linear learning-rate warm-up length against the epochs.';

-- Lock the model row for training: it must exist and be the caller's to change.
CREATE FUNCTION medtl._lock_model_for_training(model text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    id bigint;
BEGIN
    SELECT m.model_id INTO id FROM medtl.models m WHERE m.name = model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
    END IF;
    SELECT m.model_id INTO id FROM medtl.models m
     WHERE m.model_id = id AND medtl._is_member(m.owner) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'permission denied to train model "%"', model
            USING ERRCODE = 'insufficient_privilege', HINT = 'Only the model''s owner may train it.';
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION medtl._lock_model_for_training(text) IS 'Lock a model for a training run; only its owner side may train it.';

-- Batch norm when the caller does not say: a model trained from scratch
-- ('pretrained' false in its metadata) needs batch statistics, as in PyTorch's
-- model.train(); a model derived from a pretrained backbone keeps the
-- backbone's statistics and affine ('frozen'), which is robust with small
-- batches and required by backbones whose batch norm was folded.
CREATE FUNCTION medtl._default_batch_norm(model_id bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.metadata->>'pretrained' = 'false' THEN 'train' ELSE 'frozen' END
      FROM medtl.models m WHERE m.model_id = _default_batch_norm.model_id
$$;
COMMENT ON FUNCTION medtl._default_batch_norm(bigint) IS 'train for a model initialised from scratch, else frozen.';

-- The loss a run uses: as given (checked against the model's task), else
-- cross_entropy for classifiers and cross_entropy+dice for segmentation.
CREATE FUNCTION medtl._resolve_loss(model_id bigint, loss text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    seg boolean := (SELECT m.task = 'segmentation' FROM medtl.models m WHERE m.model_id = _resolve_loss.model_id);
BEGIN
    IF seg AND loss = 'focal' THEN
        RAISE EXCEPTION 'a segmentation model trains with cross_entropy, dice or cross_entropy+dice, not focal'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT seg AND loss IN ('dice', 'cross_entropy+dice') THEN
        RAISE EXCEPTION 'the % loss is for segmentation models; a classifier trains with cross_entropy or focal', loss
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN coalesce(loss, CASE WHEN seg THEN 'cross_entropy+dice' ELSE 'cross_entropy' END);
END
$$;
COMMENT ON FUNCTION medtl._resolve_loss(bigint, text) IS 'The loss of a run: as given, checked against the model''s task, or the task''s default.';

CREATE FUNCTION medtl.train(
    model text,
    source text,
    image_column text DEFAULT 'image',
    label_column text DEFAULT 'label',
    epochs int DEFAULT 10,
    batch_size int DEFAULT 32,
    lr float8 DEFAULT NULL,
    optimizer text DEFAULT 'adamw',
    weight_decay float8 DEFAULT NULL,
    momentum float8 DEFAULT 0.9,
    schedule text DEFAULT 'cosine',
    warmup_epochs int DEFAULT 0,
    step_size int DEFAULT 5,
    gamma float8 DEFAULT 0.1,
    freeze text DEFAULT 'backbone',
    augment boolean DEFAULT NULL,
    flip boolean DEFAULT true,
    rotation float8 DEFAULT 10,
    brightness float8 DEFAULT 0.2,
    contrast float8 DEFAULT 0.2,
    crop_scale float8 DEFAULT 0.8,
    class_weights text DEFAULT 'none',
    class_weight real[] DEFAULT NULL,
    loss text DEFAULT NULL,
    focal_gamma float8 DEFAULT 2.0,
    label_smoothing float8 DEFAULT 0,
    validation float8 DEFAULT 0.1,
    validation_source text DEFAULT NULL,
    group_column text DEFAULT NULL,
    keep_best text DEFAULT NULL,
    patience int DEFAULT NULL,
    seed bigint DEFAULT 42,
    skip_bad_rows boolean DEFAULT false,
    batch_norm text DEFAULT NULL,
    mask_column text DEFAULT 'mask',
    ema float8 DEFAULT 0,
    dropout float8 DEFAULT 0,
    head_lr_scale float8 DEFAULT 1)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    mid bigint;
    rid bigint;
    v_loss text;
    v_seg boolean;
    v_do float8;
    v_lr float8 := coalesce(lr, CASE WHEN optimizer = 'sgd' THEN 0.01 ELSE 1e-3 END);
    v_wd float8 := coalesce(weight_decay, CASE WHEN optimizer = 'adamw' THEN 0.01 ELSE 0 END);
    v_aug boolean := coalesce(augment, train.freeze IS DISTINCT FROM 'backbone');
    v_val float8 := CASE WHEN validation_source IS NULL THEN validation ELSE 0 END;
    v_bn text;
    given jsonb;
    resolved jsonb;
    summary jsonb;
BEGIN
    PERFORM medtl._check_train_options(epochs, batch_size, v_lr, optimizer, schedule,
                                       class_weights, coalesce(loss, 'cross_entropy'), validation, keep_best);
    PERFORM medtl._check_head_lr_scale(head_lr_scale);
    PERFORM medtl._check_warmup(warmup_epochs, epochs);
    mid := medtl._lock_model_for_training(model);
    v_bn := coalesce(batch_norm, medtl._default_batch_norm(mid));
    v_loss := medtl._resolve_loss(mid, loss);
    v_seg := (SELECT m.task = 'segmentation' FROM medtl.models m WHERE m.model_id = mid);
    v_do := coalesce(dropout, 0);
    given := jsonb_strip_nulls(jsonb_build_object(
        'image_column', image_column, 'label_column', label_column, 'epochs', epochs,
        'batch_size', batch_size, 'lr', lr, 'optimizer', optimizer, 'weight_decay', weight_decay,
        'momentum', momentum, 'schedule', schedule, 'warmup_epochs', warmup_epochs,
        'step_size', step_size, 'gamma', gamma, 'freeze', train.freeze, 'augment', augment,
        'flip', flip, 'rotation', rotation, 'brightness', brightness, 'contrast', contrast,
        'crop_scale', crop_scale, 'class_weights', class_weights, 'class_weight', class_weight,
        'loss', loss, 'focal_gamma', focal_gamma, 'label_smoothing', label_smoothing,
        'validation', validation, 'validation_source', validation_source,
        'group_column', group_column, 'keep_best', keep_best, 'patience', patience,
        'seed', seed, 'skip_bad_rows', skip_bad_rows, 'batch_norm', batch_norm,
        'mask_column', CASE WHEN mask_column IS DISTINCT FROM 'mask' THEN mask_column END,
        'ema', CASE WHEN ema IS DISTINCT FROM 0 THEN ema END,
        'dropout', CASE WHEN dropout IS DISTINCT FROM 0 THEN dropout END,
        'head_lr_scale', CASE WHEN head_lr_scale IS DISTINCT FROM 1 THEN head_lr_scale END));
    resolved := given || jsonb_build_object('lr', v_lr, 'weight_decay', v_wd, 'augment', v_aug,
                                            'validation', v_val, 'batch_norm', v_bn, 'loss', v_loss,
                                            'dropout', v_do, 'head_lr_scale', head_lr_scale,
                                            'focal_gamma', CASE WHEN v_loss = 'focal' THEN focal_gamma ELSE 0 END)
                         || CASE WHEN v_seg THEN jsonb_build_object('mask_column', mask_column) ELSE '{}' END;
    INSERT INTO medtl.runs (model_id, source, params, resolved, seed)
    VALUES (mid, source, given, resolved, seed) RETURNING run_id INTO rid;

    summary := medtl._train_run(rid, model, source, image_column,
        CASE WHEN v_seg THEN mask_column ELSE label_column END, group_column,
        validation_source, 1, epochs, batch_size, v_lr, optimizer, v_wd, momentum, schedule,
        warmup_epochs, step_size, gamma, coalesce(train.freeze, 'none'),
        v_aug AND flip, CASE WHEN v_aug THEN rotation ELSE 0 END,
        CASE WHEN v_aug THEN brightness ELSE 0 END, CASE WHEN v_aug THEN contrast ELSE 0 END,
        CASE WHEN v_aug THEN crop_scale ELSE 1 END,
        class_weights, class_weight, CASE WHEN v_loss = 'focal' THEN focal_gamma ELSE 0 END,
        label_smoothing, v_val, keep_best, patience, seed, skip_bad_rows, v_bn,
        CASE WHEN v_seg THEN v_loss END, coalesce(ema, 0), v_do, head_lr_scale);

    UPDATE medtl.runs r SET status = 'completed', finished_at = clock_timestamp(),
           seconds = extract(epoch FROM clock_timestamp() - r.started_at),
           n_train = (summary->>'n_train')::int, n_val = (summary->>'n_val')::int,
           resolved = r.resolved || jsonb_build_object('phases', jsonb_build_array(summary))
     WHERE r.run_id = rid;
    RETURN rid;
END
$$;
COMMENT ON FUNCTION medtl.train(text, text, text, text, int, int, float8, text, float8, float8, text, int, int, float8, text, boolean, boolean, float8, float8, float8, float8, text, real[], text, float8, float8, float8, text, text, text, int, bigint, boolean, text, text, float8, float8, float8)
    IS 'Fine-tune a model (a segmentation model on images and masks in mask_column) on the rows of a table or query; per-epoch metrics go to medtl.epochs, the run to medtl.runs, and the trained weights replace the model''s rows when the run completes. Returns the run id.';

CREATE FUNCTION medtl.fine_tune(
    model text,
    source text,
    image_column text DEFAULT 'image',
    label_column text DEFAULT 'label',
    head_epochs int DEFAULT 3,
    head_lr float8 DEFAULT 1e-3,
    epochs int DEFAULT 5,
    lr float8 DEFAULT 1e-4,
    freeze text DEFAULT 'none',
    batch_size int DEFAULT NULL,
    optimizer text DEFAULT 'adamw',
    weight_decay float8 DEFAULT NULL,
    augment boolean DEFAULT true,
    class_weights text DEFAULT NULL,
    loss text DEFAULT NULL,
    validation float8 DEFAULT 0.1,
    validation_source text DEFAULT NULL,
    group_column text DEFAULT NULL,
    keep_best text DEFAULT NULL,
    seed bigint DEFAULT 42,
    skip_bad_rows boolean DEFAULT false,
    batch_norm text DEFAULT NULL,
    mask_column text DEFAULT 'mask',
    ema float8 DEFAULT 0,
    dropout float8 DEFAULT 0,
    label_smoothing float8 DEFAULT 0,
    head_lr_scale float8 DEFAULT 1,
    warmup_epochs int DEFAULT 0,
    flip boolean DEFAULT true,
    rotation float8 DEFAULT 10,
    brightness float8 DEFAULT 0.2,
    contrast float8 DEFAULT 0.2,
    crop_scale float8 DEFAULT 0.8)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    mid bigint;
    rid bigint;
    v_loss text;
    v_seg boolean;
    v_do float8;
    v_cw text;
    v_wd float8 := coalesce(weight_decay, CASE WHEN optimizer = 'adamw' THEN 0.01 ELSE 0 END);
    v_val float8 := CASE WHEN validation_source IS NULL THEN validation ELSE 0 END;
    v_bs int := batch_size;
    v_bn text;
    given jsonb;
    s1 jsonb;
    s2 jsonb;
BEGIN
    PERFORM medtl._check_train_options(greatest(head_epochs, 1), coalesce(batch_size, 32), head_lr, optimizer,
                                       'cosine', coalesce(class_weights, 'none'), coalesce(loss, 'cross_entropy'),
                                       validation, keep_best);
    PERFORM medtl._check_train_options(greatest(epochs, 1), coalesce(batch_size, 32), lr, optimizer,
                                       'cosine', coalesce(class_weights, 'none'), coalesce(loss, 'cross_entropy'),
                                       validation, keep_best);
    PERFORM medtl._check_head_lr_scale(head_lr_scale);
    PERFORM medtl._check_warmup(warmup_epochs, epochs);
    IF augment THEN
        PERFORM medtl._check_augment(flip, rotation, brightness, contrast, crop_scale);
    END IF;
    mid := medtl._lock_model_for_training(model);
    -- batch size: 32, or 16 for a source of fewer than 1000 rows, so that a
    -- small data set still gets some 30 optimizer steps per epoch (at 32,
    -- BreastMNIST's 624 rows made 18, and test AUC was lower on all 7 seeds tried)
    IF v_bs IS NULL THEN
        EXECUTE format('SELECT CASE WHEN count(*) < 1000 THEN 16 ELSE 32 END FROM %s t',
                       medtl._source_from(source)) INTO v_bs;
    END IF;
    v_bn := coalesce(batch_norm, medtl._default_batch_norm(mid));
    v_loss := medtl._resolve_loss(mid, loss);
    v_seg := (SELECT m.task = 'segmentation' FROM medtl.models m WHERE m.model_id = mid);
    -- classes balanced for classifiers; a segmentation loss with Dice needs no pixel weights
    v_cw := coalesce(class_weights, CASE WHEN v_seg THEN 'none' ELSE 'balanced' END);
    v_do := coalesce(dropout, 0);
    given := jsonb_strip_nulls(jsonb_build_object(
        'recipe', 'fine_tune', 'image_column', image_column, 'label_column', label_column,
        'head_epochs', head_epochs, 'head_lr', head_lr, 'epochs', epochs, 'lr', lr,
        'freeze', fine_tune.freeze, 'batch_size', batch_size, 'optimizer', optimizer,
        'weight_decay', weight_decay, 'augment', augment, 'class_weights', class_weights,
        'loss', loss, 'validation', validation, 'validation_source', validation_source,
        'group_column', group_column, 'keep_best', keep_best, 'seed', seed,
        'skip_bad_rows', skip_bad_rows, 'batch_norm', batch_norm,
        'mask_column', CASE WHEN mask_column IS DISTINCT FROM 'mask' THEN mask_column END,
        'ema', ema, 'dropout', dropout,
        'label_smoothing', CASE WHEN label_smoothing IS DISTINCT FROM 0 THEN label_smoothing END,
        'head_lr_scale', CASE WHEN head_lr_scale IS DISTINCT FROM 1 THEN head_lr_scale END,
        'warmup_epochs', CASE WHEN warmup_epochs IS DISTINCT FROM 0 THEN warmup_epochs END,
        'flip', CASE WHEN flip IS DISTINCT FROM true THEN flip END,
        'rotation', CASE WHEN rotation IS DISTINCT FROM 10 THEN rotation END,
        'brightness', CASE WHEN brightness IS DISTINCT FROM 0.2 THEN brightness END,
        'contrast', CASE WHEN contrast IS DISTINCT FROM 0.2 THEN contrast END,
        'crop_scale', CASE WHEN crop_scale IS DISTINCT FROM 0.8 THEN crop_scale END));
    INSERT INTO medtl.runs (model_id, source, params, resolved, seed)
    VALUES (mid, source, given, given || jsonb_build_object('weight_decay', v_wd, 'validation', v_val, 'batch_norm', v_bn,
                                                            'loss', v_loss, 'class_weights', v_cw, 'batch_size', v_bs,
                                                            'ema', coalesce(ema, 0), 'dropout', v_do,
                                                            'label_smoothing', coalesce(label_smoothing, 0),
                                                            'head_lr_scale', head_lr_scale,
                                                            'warmup_epochs', warmup_epochs,
                                                            'flip', augment AND flip,
                                                            'rotation', CASE WHEN augment THEN rotation ELSE 0 END,
                                                            'brightness', CASE WHEN augment THEN brightness ELSE 0 END,
                                                            'contrast', CASE WHEN augment THEN contrast ELSE 0 END,
                                                            'crop_scale', CASE WHEN augment THEN crop_scale ELSE 1 END)
                                || CASE WHEN v_seg THEN jsonb_build_object('mask_column', mask_column) ELSE '{}' END, seed)
    RETURNING run_id INTO rid;

    -- phase 1: the new head alone on the frozen backbone (features computed once)
    IF head_epochs > 0 THEN
        s1 := medtl._train_run(rid, model, source, image_column,
            CASE WHEN v_seg THEN mask_column ELSE label_column END, group_column,
            validation_source, 1, head_epochs, v_bs, head_lr, optimizer, v_wd, 0.9, 'cosine',
            0, 5, 0.1, 'backbone', false, 0, 0, 0, 1, v_cw, NULL,
            CASE WHEN v_loss = 'focal' THEN 2.0 ELSE 0 END, coalesce(label_smoothing, 0), v_val, keep_best, NULL,
            seed, skip_bad_rows, v_bn, CASE WHEN v_seg THEN v_loss END, 0, v_do, 1);
    END IF;
    -- phase 2: every layer (or those after freeze) at the low learning rate
    IF epochs > 0 THEN
        s2 := medtl._train_run(rid, model, source, image_column,
            CASE WHEN v_seg THEN mask_column ELSE label_column END, group_column,
            validation_source, 2, epochs, v_bs, lr, optimizer, v_wd, 0.9, 'cosine',
            fine_tune.warmup_epochs, 5, 0.1, fine_tune.freeze, augment AND fine_tune.flip,
            CASE WHEN augment THEN fine_tune.rotation ELSE 0 END,
            CASE WHEN augment THEN fine_tune.brightness ELSE 0 END,
            CASE WHEN augment THEN fine_tune.contrast ELSE 0 END,
            CASE WHEN augment THEN fine_tune.crop_scale ELSE 1 END, v_cw, NULL,
            CASE WHEN v_loss = 'focal' THEN 2.0 ELSE 0 END, coalesce(label_smoothing, 0), v_val, keep_best, NULL,
            seed + 1, skip_bad_rows, v_bn, CASE WHEN v_seg THEN v_loss END, coalesce(ema, 0), v_do,
            head_lr_scale);
    END IF;
    UPDATE medtl.runs r SET status = 'completed', finished_at = clock_timestamp(),
           seconds = extract(epoch FROM clock_timestamp() - r.started_at),
           n_train = (coalesce(s2, s1)->>'n_train')::int, n_val = (coalesce(s2, s1)->>'n_val')::int,
           resolved = r.resolved || jsonb_build_object('phases', jsonb_strip_nulls(jsonb_build_array(s1, s2)))
     WHERE r.run_id = rid;
    RETURN rid;
END
$$;
COMMENT ON FUNCTION medtl.fine_tune(text, text, text, text, int, float8, int, float8, text, int, text, float8, boolean, text, text, float8, text, text, text, bigint, boolean, text, text, float8, float8, float8, float8, int, boolean, float8, float8, float8, float8)
    IS 'The standard transfer-learning recipe in one call: the new head alone on the frozen backbone, then all layers (or those after freeze) at a low learning rate, with augmentation. Returns the run id.';

------------------------------------------------------------------------------
-- Models derived from backbones
------------------------------------------------------------------------------

CREATE FUNCTION medtl._init_rows(arch text, num_classes int, seed bigint, all_layers boolean,
    OUT tensor text, OUT shape int[], OUT dtype text, OUT data bytea)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'medtl_init_rows' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl._init_rows(text, int, bigint, boolean) IS 'Freshly initialised tensors of an architecture: the classifier head (a U-Net: everything but the encoder), or all of them.';

CREATE FUNCTION medtl.create_model(
    name text,
    backbone text,
    labels text[],
    seed bigint DEFAULT 42,
    pretrained boolean DEFAULT true,
    input_size int DEFAULT NULL,
    mean real[] DEFAULT NULL,
    std real[] DEFAULT NULL,
    task text DEFAULT 'classification',
    replace boolean DEFAULT false,
    upsample text DEFAULT 'bilinear')
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    b medtl.models;
    v_arch text;
    id bigint;
    k int := cardinality(labels);
    head text[];
    seg boolean := task = 'segmentation';
BEGIN
    IF task IS NULL OR task NOT IN ('classification', 'segmentation') THEN
        RAISE EXCEPTION 'task must be classification or segmentation, not "%"', task
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 2 THEN
        RAISE EXCEPTION '%', CASE WHEN seg THEN 'a segmentation model needs at least two labels, the background first'
                                  ELSE 'a classifier needs at least two labels' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF seg AND (upsample IS NULL OR upsample NOT IN ('bilinear', 'transpose')) THEN
        RAISE EXCEPTION 'upsample must be bilinear or transpose, not "%"', upsample
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(labels, NULL) IS NOT NULL
       OR (SELECT count(DISTINCT l) FROM unnest(labels) l) <> k THEN
        RAISE EXCEPTION 'labels must be distinct and not NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO b FROM medtl.models m WHERE m.name = backbone;
    IF FOUND AND b.arch = 'ensemble' THEN
        RAISE EXCEPTION 'model "%" is an ensemble, not a backbone', backbone USING ERRCODE = 'wrong_object_type';
    ELSIF FOUND THEN
        v_arch := b.arch;
    ELSIF NOT pretrained THEN
        v_arch := backbone;             -- from scratch: an architecture name will do
    ELSE
        RAISE EXCEPTION 'backbone model "%" does not exist', backbone USING ERRCODE = 'undefined_object',
            HINT = 'Register one with medtl.import_model(), or pass pretrained => false and an architecture name.';
    END IF;
    IF seg THEN
        -- a U-Net whose encoder is the backbone (src/nn/unet.c)
        IF v_arch NOT IN ('resnet18', 'resnet34', 'mobilenet_v2') THEN
            RAISE EXCEPTION 'no U-Net for a % backbone', v_arch USING ERRCODE = 'feature_not_supported',
                HINT = 'Segmentation models take a resnet18, resnet34 or mobilenet_v2 backbone as their encoder.';
        END IF;
        v_arch := 'unet_' || v_arch || CASE WHEN upsample = 'transpose' THEN '_tconv' ELSE '' END;
    END IF;
    PERFORM medtl._free_name(create_model.name, replace);
    PERFORM medtl._check_input_size(v_arch, coalesce(input_size, b.input_size, 224));

    INSERT INTO medtl.models (name, arch, task, labels, num_classes, input_size, mean, std, padding,
                              parent_id, source, metadata)
    VALUES (create_model.name, v_arch, task, labels, k,
            coalesce(input_size, b.input_size, 224),
            coalesce(mean, b.mean, '{0.485,0.456,0.406}'), coalesce(std, b.std, '{0.229,0.224,0.225}'),
            coalesce(b.padding, 'symmetric'),
            CASE WHEN pretrained THEN b.model_id END,
            CASE WHEN pretrained THEN 'create_model from ' || backbone ELSE 'create_model from scratch' END,
            jsonb_build_object('seed', seed, 'pretrained', pretrained, 'backbone', backbone)
            || CASE WHEN seg THEN jsonb_build_object('upsample', upsample) ELSE '{}' END)
    RETURNING model_id INTO id;

    IF pretrained AND seg THEN
        -- the backbone without its classifier becomes the encoder; decoder and head are new
        head := ARRAY(SELECT r.tensor FROM medtl._init_rows(b.arch, b.num_classes, 0, false) r);
        INSERT INTO medtl.weights (model_id, tensor, shape, dtype, data)
        SELECT id, 'encoder.' || w.tensor, w.shape, w.dtype, w.data
          FROM medtl.weights w WHERE w.model_id = b.model_id AND w.tensor <> ALL (head);
        INSERT INTO medtl.weights (model_id, tensor, shape, dtype, data)
        SELECT id, r.tensor, r.shape, r.dtype, r.data FROM medtl._init_rows(v_arch, k, seed, false) r;
    ELSIF pretrained THEN
        head := ARRAY(SELECT r.tensor FROM medtl._init_rows(v_arch, k, seed, false) r);
        INSERT INTO medtl.weights (model_id, tensor, shape, dtype, data)
        SELECT id, w.tensor, w.shape, w.dtype, w.data
          FROM medtl.weights w WHERE w.model_id = b.model_id AND w.tensor <> ALL (head);
        INSERT INTO medtl.weights (model_id, tensor, shape, dtype, data)
        SELECT id, r.tensor, r.shape, r.dtype, r.data FROM medtl._init_rows(v_arch, k, seed, false) r;
    ELSE
        INSERT INTO medtl.weights (model_id, tensor, shape, dtype, data)
        SELECT id, r.tensor, r.shape, r.dtype, r.data FROM medtl._init_rows(v_arch, k, seed, true) r;
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION medtl.create_model(text, text, text[], bigint, boolean, int, real[], real[], text, boolean, text)
    IS 'A new classifier for labels: the backbone''s weights with a fresh, seeded head (its parent is recorded), or, with pretrained => false, an architecture initialised from scratch; with task => ''segmentation'' a U-Net whose encoder is the backbone (decoder upsampling bilinear or transpose).';

------------------------------------------------------------------------------
-- Export
------------------------------------------------------------------------------

CREATE FUNCTION medtl.export_model(model text) RETURNS bytea
    AS 'MODULE_PATHNAME', 'medtl_export_model' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION medtl.export_model(text) IS 'The model as safetensors bytes in torchvision state_dict order, with arch, labels, mean/std, input size and padding as metadata; loads into PyTorch with load_state_dict(strict=True) and back with medtl.import_model.';

------------------------------------------------------------------------------
-- Ensembles: a model row (arch 'ensemble', no weights) whose members'
-- probabilities are averaged with weights.
------------------------------------------------------------------------------

CREATE TABLE medtl.ensemble_members (
    model_id    bigint NOT NULL REFERENCES medtl.models (model_id) ON DELETE CASCADE,
    position    int NOT NULL CHECK (position >= 1),
    member_id   bigint NOT NULL REFERENCES medtl.models (model_id),
    weight      real NOT NULL CHECK (weight > 0 AND weight < 'Infinity'),
    PRIMARY KEY (model_id, position),
    CHECK (member_id <> model_id)
);
CREATE INDEX ensemble_members_member ON medtl.ensemble_members (member_id);
COMMENT ON TABLE medtl.ensemble_members IS 'Members of ensemble models (medtl.models rows with arch ''ensemble'') and their weights.';
SELECT pg_catalog.pg_extension_config_dump('medtl.ensemble_members', '');
CREATE TRIGGER ensemble_members_inserted AFTER INSERT ON medtl.ensemble_members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION medtl._weights_changed();
CREATE TRIGGER ensemble_members_updated AFTER UPDATE ON medtl.ensemble_members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION medtl._weights_changed();
CREATE TRIGGER ensemble_members_deleted AFTER DELETE ON medtl.ensemble_members
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION medtl._weights_changed();
ALTER TABLE medtl.ensemble_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY ensemble_members_read ON medtl.ensemble_members FOR SELECT
    USING (EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = ensemble_members.model_id));
CREATE POLICY ensemble_members_write ON medtl.ensemble_members FOR ALL
    USING (EXISTS (SELECT 1 FROM medtl.models m
                    WHERE m.model_id = ensemble_members.model_id AND medtl._is_member(m.owner)))
    WITH CHECK (EXISTS (SELECT 1 FROM medtl.models m
                    WHERE m.model_id = ensemble_members.model_id AND medtl._is_member(m.owner))
                AND EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = ensemble_members.member_id));
GRANT SELECT, INSERT, UPDATE, DELETE ON medtl.ensemble_members TO PUBLIC;

CREATE FUNCTION medtl.create_ensemble(
    name text,
    models text[],
    weights real[] DEFAULT NULL,
    replace boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n int := cardinality(models);
    first medtl.models;
    m medtl.models;
    id bigint;
BEGIN
    IF n IS NULL OR n < 2 THEN
        RAISE EXCEPTION 'an ensemble needs at least two member models' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(models, NULL) IS NOT NULL
       OR (SELECT count(DISTINCT x) FROM unnest(models) x) <> n THEN
        RAISE EXCEPTION 'member models must be distinct and not NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF weights IS NOT NULL AND (cardinality(weights) <> n OR array_position(weights, NULL) IS NOT NULL
        OR EXISTS (SELECT 1 FROM unnest(weights) w WHERE NOT (w > 0 AND w < 'Infinity'))) THEN
        RAISE EXCEPTION 'weights must be % positive finite numbers, one per member', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. n LOOP
        SELECT * INTO m FROM medtl.models x WHERE x.name = models[i];
        IF NOT FOUND THEN
            RAISE EXCEPTION 'model "%" does not exist', models[i] USING ERRCODE = 'undefined_object';
        END IF;
        IF m.arch = 'ensemble' THEN
            RAISE EXCEPTION 'model "%" is an ensemble; ensembles cannot be nested', models[i]
                USING ERRCODE = 'wrong_object_type';
        END IF;
        IF m.task <> 'classification' THEN
            RAISE EXCEPTION 'model "%" is a % model; ensembles average classifiers', models[i], m.task
                USING ERRCODE = 'wrong_object_type';
        END IF;
        IF i = 1 THEN
            first := m;
        ELSIF m.num_classes <> first.num_classes
              OR m.labels IS DISTINCT FROM first.labels THEN
            RAISE EXCEPTION 'models "%" and "%" do not share labels', first.name, m.name
                USING ERRCODE = 'data_exception',
                      DETAIL = format('"%s" has %s; "%s" has %s.', first.name,
                                      coalesce(first.labels::text, first.num_classes || ' unlabelled classes'),
                                      m.name, coalesce(m.labels::text, m.num_classes || ' unlabelled classes'));
        END IF;
    END LOOP;
    PERFORM medtl._free_name(create_ensemble.name, replace);
    INSERT INTO medtl.models (name, arch, task, labels, num_classes, source, metadata)
    VALUES (create_ensemble.name, 'ensemble', 'classification', first.labels, first.num_classes,
            'ensemble of ' || array_to_string(models, ', '),
            jsonb_build_object('members', to_jsonb(models), 'weights', to_jsonb(weights)))
    RETURNING model_id INTO id;
    INSERT INTO medtl.ensemble_members (model_id, position, member_id, weight)
    SELECT id, o, x.model_id, coalesce(weights[o], 1)
      FROM unnest(models) WITH ORDINALITY u(member, o) JOIN medtl.models x ON x.name = u.member;
    RETURN id;
END
$$;
COMMENT ON FUNCTION medtl.create_ensemble(text, text[], real[], boolean)
    IS 'An ensemble of classifiers that share labels: predict, predict_proba, predict_topk and evaluate average the members'' probabilities (weighted, weights normalised to sum 1). Returns the model id.';
