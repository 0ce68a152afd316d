"""The generation and judging pool: replicas of ``fedsafe.actors.generator.Generator`` per model, on Ray.

    pool = GenerationPool(cfg, cache_dir=Path("runs/cache/generations"))
    key = pool.register_adapter(coordinator.global_ref(), spec, peft_config)   # the base model's adapter
    answers = pool.generate(cfg.model.name, [Request(p, params, adapter=key) for p in prompts])

A model's replicas start on its first request and live until ``shutdown``. The federation's base model is
served with LoRA enabled (every registered adapter is loaded into each of its replicas); the off-the-shelf
generator and judge models are plain. Requests are split into contiguous chunks, one per replica (sent in
pieces the replica batches as it would the whole chunk, so that a progress bar counts answers), and the
answers come back in request order. A replica that dies or hangs is started again in its reserved slot
(adapters loaded again) and its unfinished piece sent again. Calls are cached on disk by a hash of (model,
backend, adapter, prompts, templates, sampling parameters), so a second run with the same inputs reuses
the answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tqdm.auto import tqdm

from fedsafe.actors.generator import Generator, adapter_key
from fedsafe.cluster.plan import bundle, generation_models
from fedsafe.cluster.runtime import actor_env, failed_node, first_line, setup_failure
from fedsafe.config import ExperimentConfig
from fedsafe.errors import WorkerSetupError
from fedsafe.requests import Request

log = logging.getLogger(__name__)


def pieces(requests: list[Request], batch_size: int) -> list[list[Request]]:
    """``requests`` cut into consecutive pieces of about ``batch_size`` that the ``hf`` backend batches
    exactly as it batches the whole list: it groups requests by (adapter, parameters but the seed) and
    batches each group's members in order, so a cut may fall only where every group has sent a multiple of
    ``batch_size`` or all its members. ``batch_size`` 0 (vLLM, which batches continuously): one piece."""
    if batch_size <= 0 or len(requests) <= batch_size:
        return [requests]
    group = [(r.adapter, dataclasses.replace(r.params, seed=0)) for r in requests]
    total: dict = {}
    for g in group:
        total[g] = total.get(g, 0) + 1
    sent: dict = dict.fromkeys(total, 0)
    out, start = [], 0
    for i, g in enumerate(group):
        sent[g] += 1
        whole = all(c % batch_size == 0 or c == total[k] for k, c in sent.items())
        if whole and i + 1 - start >= batch_size:
            out.append(requests[start:i + 1])
            start = i + 1
    if start < len(requests):
        out.append(requests[start:])
    return out


def by_length(requests: list[Request]) -> list[int]:
    """Request indices by prompt length (stable): the ``hf`` backend's batches then hold prompts of similar
    lengths and pad less (vLLM batches continuously and needs no order)."""
    return sorted(range(len(requests)), key=lambda i: len(requests[i].text))


def cache_key(model: str, backend: str, requests: list[Request]) -> str:
    payload = json.dumps({"model": model, "backend": backend,
                          "requests": [dataclasses.asdict(r) for r in requests]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    """One JSON file of answers per call, named by its cache key; writes are atomic."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> list[str] | None:
        file = self.folder / f"{key}.json"
        if not file.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(file.read_text())

    def put(self, key: str, answers: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(answers, f)
        os.replace(tmp, self.folder / f"{key}.json")


class GenerationPool:
    def __init__(self, cfg: ExperimentConfig, cache_dir: Path | None = None, generator_cls: type = Generator) -> None:
        """``generator_cls``: the replica actor class (a stand-in in tests of placement)."""
        self.cfg = cfg
        g = cfg.generation
        self.remote = ray.remote(num_cpus=g.cpus_per_replica, num_gpus=g.gpus_per_replica)(generator_cls)
        self.env = actor_env(g.gpus_per_replica)  # a replica without a GPU sees none
        # the pool's resources are reserved up front (one bundle per replica of each model it may serve), so
        # trainers started later, elastic ones included, never take them
        models = generation_models(cfg)
        self.slots = {m: list(range(i * g.replicas, (i + 1) * g.replicas)) for i, m in enumerate(models)}
        slots = len(models) * g.replicas
        self.pg = placement_group([bundle(g.cpus_per_replica, g.gpus_per_replica) for _ in range(slots)], strategy="PACK")
        ray.get(self.pg.ready(), timeout=cfg.cluster.round_timeout_s)
        self.groups: dict[str, list] = {}
        self.adapters: dict[str, tuple] = {}  # key -> (vector ref, spec, peft_config)
        self.cache = GenerationCache(cache_dir) if (cache_dir is not None and g.cache) else None
        self.timeout = cfg.cluster.round_timeout_s
        self.restarts = 0  # replicas started again after dying or hanging
        self.lock = threading.RLock()  # one call at a time: federations running side by side share the replicas
        self.closed = False  # shut down: a call running in another thread restarts no replica

    @property
    def base_model(self) -> str:
        return self.cfg.model.name

    @property
    def generator_model(self) -> str:
        """The off-the-shelf LLM (docs/method.md#maliciousgen-and-defensegen): generation.model, else the base
        model."""
        return self.cfg.generation.model or self.cfg.model.name

    def _replicas(self, model: str) -> list:
        if model not in self.groups:
            self.groups[model] = self._start([self._launch(model, i) for i in range(self.cfg.generation.replicas)],
                                             model)
        return self.groups[model]

    def _launch(self, model: str, replica: int):
        if self.closed:  # a call still running in another thread after shutdown starts nothing
            raise RuntimeError("the generation pool was shut down (the run is stopping)")
        base = model == self.base_model
        model_cfg = dataclasses.replace(self.cfg.model, name=model)
        g = self.cfg.generation
        return self._in_slot(self.remote, model, replica).remote(model_cfg, g, self.cfg.adapter_lora.r if base else 0,
                                                                  self.cfg.seed, g.cpus_per_replica)

    def _start(self, actors: list, model: str) -> list:
        """Wait for ``actors`` to load ``model``; the base model's replicas get every registered adapter. A
        replica that cannot load the model or a package stops the run with one line (``WorkerSetupError``)."""
        try:
            ray.get([a.ready.remote() for a in actors], timeout=self.timeout)
        except (RayActorError, RayTaskError) as err:
            node = failed_node(err)
            where = f"a generation replica on {node}" if node else "a generation replica"
            raise WorkerSetupError(setup_failure(err, where, model)) from None
        if model == self.base_model:
            ray.get([a.add_adapter.remote(*entry) for a in actors for entry in self.adapters.values()],
                    timeout=self.timeout)
        return actors

    def _restart(self, model: str, replica: int, reason: str) -> None:
        """Replace a dead or stuck replica with a new one in the same reserved slot."""
        log.warning("generation replica %d of %s is restarted (%s)", replica, model, reason)
        try:
            ray.kill(self.groups[model][replica])
        except RayActorError:
            pass
        self.restarts += 1
        self.groups[model][replica] = self._start([self._launch(model, replica)], model)[0]

    def _in_slot(self, remote, model: str, replica: int):
        """``remote`` scheduled into the bundle reserved for ``model``'s ``replica`` (models the plan does
        not know, e.g. in tests, are scheduled wherever Ray finds room)."""
        if model not in self.slots:
            return remote.options(runtime_env=self.env)
        return remote.options(runtime_env=self.env, scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=self.slots[model][replica]))

    def register_adapter(self, vector_ref, spec, peft_config: dict) -> str:
        """Make an adapter of the base model available to requests; returns its key (a content hash)."""
        with self.lock:
            key = adapter_key(ray.get(vector_ref, timeout=self.timeout))
            if key not in self.adapters:
                self.adapters[key] = (vector_ref, spec, peft_config)
                if self.base_model in self.groups:
                    ray.get([a.add_adapter.remote(vector_ref, spec, peft_config)
                             for a in self.groups[self.base_model]], timeout=self.timeout)
            return key

    def generate(self, model: str, requests: list[Request]) -> list[str]:
        """Answers to ``requests`` by ``model``, in order; adapters only for the base model."""
        with self.lock:
            if not requests:
                return []
            if model != self.base_model and any(r.adapter for r in requests):
                raise ValueError(f"adapters belong to the base model {self.base_model!r}, not to {model!r}")
            key = cache_key(model, self.cfg.generation.backend, requests)
            if self.cache is not None and (hit := self.cache.get(key)) is not None:
                return hit
            order = by_length(requests) if self.cfg.generation.backend == "hf" else list(range(len(requests)))
            answers = [""] * len(requests)
            done = (a for part in self._run_chunks(model, [requests[i] for i in order]) for a in part)
            for i, answer in zip(order, done):
                answers[i] = answer
            if self.cache is not None:
                self.cache.put(key, answers)
            return answers

    def _run_chunks(self, model: str, requests: list[Request]) -> list[list[str]]:
        """One contiguous chunk of ``requests`` per replica, sent in pieces (``pieces``) so that a progress
        bar counts the answers. A replica that dies, or gives no answer within ``cluster.round_timeout_s``,
        is restarted and its unfinished piece sent again (at most ``cluster.max_retries`` times per piece);
        requests are seeded, so the answers are the same."""
        actors = self._replicas(model)
        per_actor = -(-len(requests) // len(actors))
        chunks = [requests[i:i + per_actor] for i in range(0, len(requests), per_actor)]
        size = self.cfg.generation.hf_batch_size if self.cfg.generation.backend == "hf" else 0
        queues = [pieces(chunk, size) for chunk in chunks]  # per replica: its pieces, in order
        parts: list[list[list[str]]] = [[] for _ in chunks]
        tries = [0] * len(chunks)
        running = {self.groups[model][i].generate.remote(queue[0]): i for i, queue in enumerate(queues)}
        with tqdm(total=len(requests), desc=f"answers of {model}", leave=False, mininterval=2.0) as bar:
            while running:
                done, _ = ray.wait(list(running), num_returns=1, timeout=self.timeout)
                failed: list[tuple[int, str]] = []
                if not done:
                    failed = [(i, f"no answer within cluster.round_timeout_s={self.timeout:g}s")
                              for i in running.values()]
                    running.clear()
                else:
                    i = running.pop(done[0])
                    try:
                        parts[i].append(ray.get(done[0], timeout=self.timeout))
                    except RayActorError as err:
                        failed = [(i, first_line(err))]
                    else:
                        bar.update(len(queues[i].pop(0)))
                        if queues[i]:
                            running[self.groups[model][i].generate.remote(queues[i][0])] = i
                for i, reason in failed:
                    tries[i] += 1
                    if tries[i] > self.cfg.cluster.max_retries:
                        raise RuntimeError(f"generation replica {i} of {model} failed {tries[i]} times ({reason}); "
                                           "see its log (ray logs) and cluster.max_retries")
                    self._restart(model, i, reason)
                    running[self.groups[model][i].generate.remote(queues[i][0])] = i
        return [[a for piece in replica for a in piece] for replica in parts]

    def reward_scores(self, model: str, instructions: list[str], responses: list[str]) -> list[float]:
        """Reward-model scores, computed in one Ray task with the pool's per-replica resources."""
        from fedsafe.evaluation.reward import reward_scores

        g = self.cfg.generation
        task = ray.remote(num_cpus=g.cpus_per_replica, num_gpus=g.gpus_per_replica)(reward_scores)
        with self.lock:
            return ray.get(self._in_slot(task, model, 0).remote(model, instructions, responses, 16,
                                                                 self.cfg.model.trust_remote_code,
                                                                 self.cfg.model.cache_dir), timeout=self.timeout)

    def shutdown(self) -> None:
        self.closed = True
        actors = [a for group in self.groups.values() for a in group]
        try:  # each replica removes its adapters; one that does not answer is killed all the same
            ray.get([a.close.remote() for a in actors], timeout=5)
        except Exception:  # noqa: BLE001 (a dead or hung replica; the next replica's start sweeps its folder)
            pass
        for actor in actors:
            ray.kill(actor)
        self.groups.clear()
        remove_placement_group(self.pg)
