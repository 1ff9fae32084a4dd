"""How MIA trains and is scored beyond the shared loop: the step-wise recipe of Sec. III-C (step 1
the global branch, step 2 everything with the CNN, optional step 3 BFM alone), the vocabulary of the
training captions, and re-scoring one trained model under several fusions of Eq. 18 (Tables II,
III, VIII, IX differ only in how the scores are combined): a run's evaluation keeps every component
score of its test split in its run folder (``SCORES_FILE``, float32 as computed), and ``run_scores``
reads them back, so that each trained model is encoded and scored pair by pair once."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...config import TrainConfig, to_dict
from ...data.datasets import EvalSet
from ...data.text import Vocabulary
from ...evaluate import check_rerank, encode_split, retrieval_metrics, split_fingerprint
from ..base import SENTENCE, Recipe
from .model import EVAL_ONLY, MIA, MIAConfig, fuse

STEPS = {"step1": 1, "step2": 2, "combined": 2, "step3": 3}
# a run's test-split component scores {"G", "I", "T", "P", "N"}, beside its checkpoint (at quick,
# 2,658 x 1,329 float32 = 14 MB each): computed once by the run's evaluation, read by re-scoring
SCORES_FILE = "test_scores.safetensors"


class MIARecipe(Recipe):
    def data_state(self, cfg: MIAConfig, train_records) -> dict:
        """A word vocabulary of the training captions (every word seen once or more)."""
        captions = [c for r in train_records for c in r.captions]
        return {"vocab": Vocabulary.build(captions, min_count=1, unknown="token")}

    def stages(self, model: MIA) -> list[tuple[str, TrainConfig]]:
        """The steps as (stage name, TrainConfig): ``step_epochs`` and ``step_lr`` set each step's
        length and learning rate (``train.epochs`` / ``train.lr`` are not read)."""
        cfg, (e1, e2, e3), (lr1, lr2, lr3) = model.cfg, model.cfg.step_epochs, model.cfg.step_lr

        def stage(epochs, lr, decay=False):
            milestones = tuple(range(cfg.decay_every, epochs, cfg.decay_every)) if decay else ()
            return dataclasses.replace(cfg.train, epochs=epochs, lr=lr, milestones=milestones,
                                       schedule="multistep" if milestones else "constant")

        plan = []
        if cfg.recipe == "combined":  # Table V / Fine (L): one stage from the start
            plan.append(("combined", stage(e1 + e2, lr2, decay=True)))
        else:
            plan += [("step1", stage(e1, lr1)), ("step2", stage(e2, lr2, decay=True))]
        if cfg.bfm == "step3":
            plan.append(("step3", stage(e3, lr3)))
        return plan

    def enter_stage(self, model: MIA, stage: str) -> None:
        model.set_step(STEPS[stage])

    def evaluate_run(self, model: MIA, records, run_dir, *, device: str, rerank_k: int, progress: bool,
                     per_query: bool) -> dict:
        """The run's metrics (Eq. 18 at its own settings) from every component score of the test
        split, which stay in ``run_dir`` for re-scoring the run under the other fusions."""
        check_rerank(model, rerank_k)  # MIA ranks once
        scores, _, _, eval_set = split_scores(model, records, device=device, progress=progress)
        save_scores(run_dir, scores, scores_key(model, eval_set))
        return scoring_metrics(model, scores, eval_set, per_query=per_query,
                               source_index=eval_set.caption_image_idx)

    @torch.no_grad()
    def explain(self, model, caption: str, image: torch.Tensor) -> dict | None:
        """BFM P→N weights α_ik (Eq. 13) of each noun phrase over the n parts and RGA's relation
        attention v_k(I, T) (Eq. 6) of the sentence, drawn as horizontal stripes."""
        text, img = model.encode_texts([caption]), model.encode_images(image[None].to(model.device))
        tokens, rows = [], []
        if "P_rga" in img and "T" in text:
            tokens.append(SENTENCE)
            rows.append(model.relation_attention(text, img)[0])  # [1, n]
        if "N_bfm" in text:
            tokens += [p for _, _, p in model.phrases_of(caption)]
            rows.append(model.phrase_part_attention(text, img, 0)[0])  # [m, n]
        if not rows:
            return None
        return {"tokens": tokens, "maps": torch.cat(rows)[:, :, None].cpu(),
                "kind": "MIA BFM phrase→part α (Eq. 13) / RGA sentence→part v_k (Eq. 6)"}


def split_eval_overrides(overrides: dict) -> tuple[dict, dict]:
    """(training overrides, evaluation-only overrides) of an ablation row: rows that differ only in
    ``EVAL_ONLY`` fields share one trained model."""
    overrides = overrides or {}
    return ({k: v for k, v in overrides.items() if k not in EVAL_ONLY},
            {k: v for k, v in overrides.items() if k in EVAL_ONLY})


def split_scores(model: MIA, records, *, device: str = "cpu", progress: bool = False):
    """Encode a split once and compute every pairwise similarity of it:
    ``(scores {"G", "I", "T", "P", "N"} -> [captions, images], text_feats, image_feats, eval_set)``."""
    text_feats, image_feats, eval_set = encode_split(model, records, model.cfg.data, device=device,
                                                     progress=progress)
    with torch.no_grad():
        scores = model.pairwise_scores(text_feats, image_feats)
    return scores, text_feats, image_feats, eval_set


def scores_key(model: MIA, eval_set: EvalSet) -> str:
    """What the component scores of a split are a function of: the model's weights, vocabulary and
    config, and the split's captions and identities (hashed; the weights as bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps([to_dict(model.cfg), model.extra_state()], sort_keys=True).encode())
    digest.update(split_fingerprint(eval_set.caption_pids, eval_set.image_pids, "\n".join(eval_set.captions)).encode())
    return digest.hexdigest()


def save_scores(run_dir, scores: dict, key: str) -> Path:
    """Write ``scores`` to ``run_dir/SCORES_FILE`` tagged with their ``scores_key`` (whole, or not at all)."""
    path = Path(run_dir) / SCORES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in scores.items()}, str(tmp), metadata={"key": key})
    tmp.replace(path)
    return path


def load_scores(run_dir, key: str, device: str = "cpu") -> dict | None:
    """The component scores kept in ``run_dir`` when they were computed for ``key``, else None."""
    path = Path(run_dir) / SCORES_FILE
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
    return load_file(str(path), device=str(device))


def run_scores(model: MIA, records, run_dir, *, device: str = "cpu") -> tuple[dict, EvalSet]:
    """``(scores, eval_set)`` of a trained run's split: the component scores its evaluation kept in
    ``run_dir``, or (a run evaluated before they were kept, other weights, another split) computed
    now and kept there."""
    eval_set = EvalSet(records)
    key = scores_key(model, eval_set)
    scores = load_scores(run_dir, key, device)
    if scores is None:
        scores, _, _, eval_set = split_scores(model, records, device=device)
        save_scores(run_dir, scores, key)
    return scores, eval_set


def scoring_metrics(model: MIA, scores: dict, eval_set, *, per_query: bool = False, source_index=None,
                    **scoring) -> dict:
    """Retrieval metrics of ``scores`` fused by the model's Eq. 18 settings, ``scoring`` (a subset of
    ``EVAL_ONLY``) overriding them; ``per_query=True`` adds each query's values (``tbpr.stats``),
    ``source_index`` SSAN's HMR1 (``tbpr.evaluate.retrieval_metrics``)."""
    settings = {**{k: getattr(model.cfg, k) for k in EVAL_ONLY}, **scoring}
    return retrieval_metrics(fuse(scores, **settings), eval_set.caption_pids, eval_set.image_pids,
                             per_query=per_query, source_index=source_index)
