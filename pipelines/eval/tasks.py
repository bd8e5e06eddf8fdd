"""What the task evaluations share: a fine-tuned student checked against its task and its features."""
from __future__ import annotations


def load_task_checkpoint(args, task: str, what: str):
    """args.checkpoint (a `task` student), args.features, args.device, args.allow_extractor_mismatch
    -> (model, tokenizer, feature files). UsageError / ValueError (one line) for a checkpoint of
    another kind or task, features of another TEE, or a folder without features."""
    from models.captioning import resolve_checkpoint, resolve_device
    from models.minivlm import MiniVLM, load_tokenizer
    from pipelines.train.featurestore import feature_files
    from pipelines.train.flags import check_kind, check_task
    from pipelines.train.pretrain_data import check_extractors

    check_kind("--checkpoint", args.checkpoint, f"a {task} student",
               ("a MiniVLM student", "a training run folder holding a MiniVLM"))
    files = feature_files(args.features, "--features")
    directory = resolve_checkpoint(args.checkpoint)
    model = MiniVLM.from_pretrained(directory, map_location=resolve_device(args.device))
    check_task(model, "--checkpoint", args.checkpoint, task, what)
    check_extractors(files, model.config.extractor_id, allow_mismatch=args.allow_extractor_mismatch,
                     tee=f"--checkpoint {args.checkpoint}")
    return model, load_tokenizer(directory), files


def region_source(model, files: list[str], wanted: set[str]):
    """The wanted images' regions (on disk, by id) as the student sees them."""
    from pipelines.train.featurestore import FeatureStore
    from pipelines.train.pair_data import RegionSource

    c = model.config
    return RegionSource(FeatureStore(files, wanted), feature_dim=c.region_feature_dim, max_regions=c.max_regions,
                        tag_min_score=c.tag_min_score)


def retrieval_pool(model, tokenizer, files: list[str], images, *, size: int, distinct: bool):
    """The evaluation pool: the first `size` images (0: all) with usable features, their captions
    (one each, none shared, with `distinct`) -> ((batch of captions and images, caption -> image
    index), counts), or (None, counts) when no image has features."""
    from models.retrieval import caption_inputs, image_inputs
    from pipelines.data.retrieval import distinct_caption_pool
    from pipelines.train.featurestore import image_ids

    # Which images have features (one column read) first, so that only the pool's rows are
    # copied, not the whole split's (a pool of 1,000 from COCO's 5,000 test images).
    have = image_ids(files)
    candidates = distinct_caption_pool(images, len(images)) if distinct else images
    pool, without = [], 0
    for im in candidates:
        if size and len(pool) == size:
            break
        if im.image_id in have:
            pool.append(im)
        else:
            without += 1
    source = region_source(model, files, {im.image_id for im in pool})
    chosen, regions = [], []
    for im in pool:
        r = source.regions(im.image_id)  # None: a row the student cannot read (counted in skipped)
        if r is not None:
            chosen.append(im)
            regions.append(r)
    counts = {"images_without_features": without, "skipped": dict(source.skipped)}
    if not chosen:
        return None, counts
    captions = [(k, text) for k, im in enumerate(chosen) for text in im.captions]
    c = model.config
    batch = {**caption_inputs(tokenizer, c, [t for _, t in captions]),
             **image_inputs(tokenizer, c, [r.tags for r in regions], [r.features for r in regions],
                            [r.boxes for r in regions])}
    device = next(model.parameters()).device
    return ({k: v.to(device) for k, v in batch.items()}, [k for k, _ in captions]), counts
