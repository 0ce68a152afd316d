#!/usr/bin/env bash
# fedsafe's GPU checks on one CUDA GPU, offline, in about 4 minutes. Run from the project root on a machine
# with torch, transformers and peft installed: bash scripts/device_check.sh (results in $OUT; docs/gpu.md
# records the last run's).
# It exercises: the Trainer (torch engine) in bf16 on CUDA with an adapter set/get round trip; save_adapter
# -> PeftModel (exact) and the adapter_config keys vLLM reads; the HF generator with the adapter on CUDA;
# seven aggregation rules, CUDA path against CPU values; peak memory of one Llama-2-7B-shaped step (16 x 512)
# with and without gradient checkpointing (fedsafe's setting) beside fedsafe's estimate of it
# (fedsafe/cluster/memory.py); the trainer with train.gradient_checkpointing against the trainer without;
# optionally an int8 trainer (with checkpointing) and ZeRO stages 0/2/3.
# Optional wheels in .whl/ for the last two (bring them along; the machine may have no registry):
#   pip download --no-deps -d .whl --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
#     bitsandbytes deepspeed hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
# deepspeed has no wheel on PyPI: `pip wheel --no-deps --no-build-isolation -w .whl deepspeed` builds one.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1 CHECKS=${CHECKS:-} TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/fs-out} \
  TORCH_EXTENSIONS_DIR=/tmp/fs/ext  # a killed JIT build leaves ext/*/lock and every later DeepSpeed start waits forever
mkdir -p "$OUT" /tmp/fs
ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=$PWD:/tmp/site
nvidia-smi -L; python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|bitsandbytes|deepspeed) '
cat > /tmp/fs/check.py <<'EOF'
import gc, glob, json, os, subprocess, sys, time, traceback, types
try:
    import omegaconf  # noqa: F401 (fedsafe.config imports it at top level; only load_config uses it)
except ImportError:
    e = types.ModuleType("omegaconf.errors"); e.OmegaConfBaseException = type("E", (Exception,), {})
    sys.modules.update({"omegaconf": types.SimpleNamespace(OmegaConf=None, errors=e), "omegaconf.errors": e})
import torch
from fedsafe.config import GenerationConfig, LoRAConfig, ModelConfig, TrainerConfig
from fedsafe.data import toy
from fedsafe.updates import ClientTask
T, RES = "/tmp/fs", {}
LORA = LoRAConfig(r=32, alpha=64, dropout=0.0, target_modules=["q_proj", "v_proj"])
TASK = ClientTask(0, 0, "benign", toy.normal_records(32, 0), [1e-3, 1e-3], 16, 512, 0.0, 0)

def small():  # random 4-layer Llama (hidden 1024, head 64) + fedsafe's builtin tiny-llama tokenizer, bf16 on disk
    if not os.path.exists(f"{T}/small/config.json"):
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        from fedsafe.models.builtin import resolve_model_path
        tok = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig("builtin:tiny-llama", cache_dir=f"{T}/c")))
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                                     num_attention_heads=16, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     bos_token_id=tok.bos_token_id)).to(torch.bfloat16).save_pretrained(f"{T}/small")
        tok.save_pretrained(f"{T}/small")
    return f"{T}/small"

def trainer(**kw):
    from fedsafe.actors.trainer import Trainer
    q, ckpt = kw.pop("quantization", "none"), kw.pop("checkpointing", False)
    tr = Trainer(ModelConfig(small(), dtype="bfloat16", quantization=q), LORA, 0, 4, TrainerConfig(gpus_per_client=1, **kw),
                 gradient_checkpointing=ckpt)
    tr.start()
    init = tr.initial_adapter(); upd, met = tr.train(init.vector, TASK)
    assert torch.isfinite(upd.delta).all() and upd.delta.norm() > 0
    tr.engine.set_adapter(init.vector + upd.delta, init.spec)  # set/get round trip through the engine
    assert torch.allclose(tr.engine.get_adapter(), init.vector + upd.delta)
    return tr, init, upd, met

def check(name, fn):
    t0 = time.time(); torch.cuda.reset_peak_memory_stats()
    try: RES[name] = {"ok": True, **(fn() or {})}
    except Exception as err: RES[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:400]}; traceback.print_exc()
    RES[name].update(s=round(time.time() - t0, 1), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    print("==", name, RES[name], flush=True)

def torch_bf16():  # trainer (torch engine) -> PEFT folder -> PeftModel (exact) -> HF generator with the adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from fedsafe.actors.generator import Generator
    from fedsafe.checkpoint import save_adapter
    from fedsafe.requests import GenerationParams, Request
    from fedsafe.training.lora import get_adapter_vector
    tr, init, upd, met = trainer(); torch.save(upd.delta, f"{T}/torch.pt")
    dtypes = sorted({f"{'lora' if 'lora_' in n else 'base'}:{p.dtype}:{p.device.type}" for n, p in tr._model.named_parameters()})
    vec = init.vector + upd.delta
    folder = save_adapter(f"{T}/adapter", vec, init.spec, init.peft_config)
    conf = json.load(open(f"{folder}/adapter_config.json"))  # what vLLM's PEFTHelper reads or rejects
    assert conf["r"] == 32 and not any(conf.get(k) for k in ("use_dora", "lora_bias", "modules_to_save"))
    base = AutoModelForCausalLM.from_pretrained(small(), dtype=torch.bfloat16).cuda()
    assert torch.equal(get_adapter_vector(PeftModel.from_pretrained(base, folder))[0].cpu(), vec)
    gen = Generator(ModelConfig(small(), dtype="bfloat16"), GenerationConfig(backend="hf"), 32, 0)
    key, p = gen.add_adapter(vec, init.spec, init.peft_config), GenerationParams(24, 0.0)
    out = gen.generate([Request("Give me a tip for baking bread.", p, adapter=k) for k in (key, "")])
    return {"dtypes": dtypes, "loss": [met.first_loss, met.loss], "gen_dtype": gen.dtype, "adapter_changes_text": out[0] != out[1]}

def aggregation():  # CUDA path (torch.sort windows, residual_torch) vs CPU path (numba kernels)
    from fedsafe.aggregation import AggregationContext, aggregate
    u = torch.randn(10, 2_000_003, generator=torch.Generator().manual_seed(0)) * 1e-3; u[7:] += 5e-3
    diffs = {}
    for rule, kw in [("fedavg", {}), ("median", {}), ("trimmed_mean", {}), ("krum_paper", {}), ("dnc", {}),
                     ("foolsgold", {"variant": "paper"}), ("residual", {})]:
        a, b = (aggregate(rule, x, context=AggregationContext(num_malicious=3, history=x), **kw) for x in (u, u.cuda()))
        diffs[rule] = float((a.vector - b.vector.cpu()).norm() / a.vector.norm())
        assert diffs[rule] < 1e-4 and torch.allclose(a.weights.double(), b.weights.cpu().double(), atol=1e-5), rule
    return {"rel_diff": diffs}

def llama7b_bf16():  # a Llama-2-7B-shaped model with random weights, built in bf16 on the GPU
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32))
    finally:
        torch.set_default_dtype(torch.float32)

def paper_shape_step(ckpt):  # Llama-2-7B shape, bf16, LoRA r32 q,v, one client step of 16 x 512 (fedsafe's train_steps)
    from fedsafe.cluster import memory
    from fedsafe.models.loading import CHECKPOINTING
    from fedsafe.training.lora import make_lora_model
    from fedsafe.training.sft import train_steps
    m = llama7b_bf16()
    if ckpt:  # as fedsafe's loader does with train.gradient_checkpointing
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING); m.config.use_cache = False
    m = make_lora_model(m, LoRAConfig(32, 64, 0.05, ["q_proj", "v_proj"]), 0)
    ids = torch.randint(3, 32000, (16, 512), device="cuda"); lab = ids.clone(); lab[:, :256] = -100
    torch.cuda.reset_peak_memory_stats(); t0 = time.time()
    losses = train_steps(m, [dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=lab)] * 2, [5e-5] * 2, 0.0, 0)
    est = memory.trainer_memory(memory.model_shape("meta-llama/Llama-2-7b-hf"), dtype="bfloat16", quantization="none",
                                batch_size=16, max_length=512, lora_rank=32, lora_targets=["q_proj", "v_proj"],
                                checkpointing=ckpt)
    return {"losses": losses, "two_steps_s": round(time.time() - t0, 2),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "estimate_gib": {k: round(v, 2) for k, v in {**vars(est), "total": est.total}.items()}}

def paper_shape_int8_step():  # the paper's trainer: Llama-2-7B shape in 8 bits through fedsafe's loader, checkpointing on
    import importlib.util
    if not importlib.util.find_spec("bitsandbytes"): return {"skip": "no bitsandbytes"}
    from transformers import AutoTokenizer
    from fedsafe.cluster import memory
    from fedsafe.models.loading import load_model_and_tokenizer
    from fedsafe.training.lora import make_lora_model
    from fedsafe.training.sft import train_steps
    folder = f"{T}/llama7b"
    if not os.path.exists(f"{folder}/config.json"):  # random weights, saved once in bf16 (13.5 GB)
        m = llama7b_bf16()
        m.save_pretrained(folder); AutoTokenizer.from_pretrained(small()).save_pretrained(folder)
        del m; gc.collect(); torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(); t0 = time.time()
    base, _ = load_model_and_tokenizer(ModelConfig(folder, dtype="bfloat16", quantization="int8"), gradient_checkpointing=True)
    m = make_lora_model(base, LoRAConfig(32, 64, 0.05, ["q_proj", "v_proj"]), 0)
    loaded = torch.cuda.max_memory_allocated() / 2**30; load_s = time.time() - t0
    ids = torch.randint(3, 32000, (16, 512), device="cuda"); lab = ids.clone(); lab[:, :256] = -100
    torch.cuda.reset_peak_memory_stats(); t0 = time.time()
    losses = train_steps(m, [dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=lab)] * 2, [5e-5] * 2, 0.0, 0)
    est = memory.trainer_memory(memory.model_shape("meta-llama/Llama-2-7b-hf"), dtype="bfloat16", quantization="int8",
                                batch_size=16, max_length=512, lora_rank=32, lora_targets=["q_proj", "v_proj"], checkpointing=True)
    return {"losses": losses, "two_steps_s": round(time.time() - t0, 2), "load_s": round(load_s, 1),
            "after_load_gib": round(loaded, 2), "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "estimate_gib": {k: round(v, 2) for k, v in {**vars(est), "total": est.total}.items()}}

def checkpointing_trainer():  # train.gradient_checkpointing through the Trainer: same update, less memory
    out = {}
    for ckpt in (False, True):
        torch.cuda.reset_peak_memory_stats()
        tr, init, upd, met = trainer(checkpointing=ckpt)
        out[ckpt] = (upd.delta, met.loss, round(torch.cuda.max_memory_allocated() / 2**30, 3))
        del tr; gc.collect(); torch.cuda.empty_cache()
    rel = float((out[True][0] - out[False][0]).norm() / out[False][0].norm())
    assert rel < 0.02, rel
    return {"rel_diff": rel, "loss": [out[False][1], out[True][1]], "peak_gib": [out[False][2], out[True][2]]}

def int8():
    import importlib.util
    if not importlib.util.find_spec("bitsandbytes"): return {"skip": "no bitsandbytes (never installed by setup.sh)"}
    tr, _, upd, met = trainer(quantization="int8", checkpointing=True)
    return {"8bit": getattr(tr._model.base_model.model, "is_loaded_in_8bit", None), "loss": [met.first_loss, met.loss],
            "checkpointing": tr._model.base_model.model.is_gradient_checkpointing}

def zero():  # one process per stage: torch.distributed (NCCL, world 1) initialises once per process
    import importlib.util
    if not importlib.util.find_spec("deepspeed"): return {"skip": "no deepspeed"}
    ref, out = torch.load(f"{T}/torch.pt"), {}
    for s in (0, 2, 3):
        for lock in glob.glob(f"{T}/ext/*/lock"): os.remove(lock)  # left by a stage killed mid-build
        try:
            p = subprocess.run([sys.executable, __file__, str(s)], capture_output=True, text=True, timeout=100)
            out[s] = (float((torch.load(f"{T}/ds{s}.pt") - ref).norm() / ref.norm()) if p.returncode == 0
                      else "FAILED " + p.stderr.strip()[-300:])
        except subprocess.TimeoutExpired:
            out[s] = "TIMEOUT 100 s"
    assert all(isinstance(v, float) and v < 0.1 for v in out.values()), out
    return {"rel_diff_vs_torch": out}

if len(sys.argv) > 1:  # ZeRO stage subprocess
    torch.save(trainer(engine="deepspeed", zero_stage=int(sys.argv[1]))[2].delta, f"{T}/ds{sys.argv[1]}.pt"); sys.exit()
ONLY = [c for c in os.environ.get("CHECKS", "").split(",") if c]  # e.g. CHECKS=paper_step_int8_gc: those alone
for name, fn in [("torch_bf16_save_load_generate", torch_bf16), ("aggregation_cuda_vs_cpu", aggregation),
                 ("paper_step_no_gc", lambda: paper_shape_step(False)), ("paper_step_gc", lambda: paper_shape_step(True)),
                 ("paper_step_int8_gc", paper_shape_int8_step), ("trainer_checkpointing", checkpointing_trainer),
                 ("int8_trainer", int8), ("deepspeed_zero_0_2_3", zero)]:
    if ONLY and name not in ONLY: continue
    check(name, fn); gc.collect(); torch.cuda.empty_cache()
json.dump(RES, open(f"{os.environ['OUT']}/device_check.json", "w"), indent=1, default=str)
print("SUMMARY", {k: v["ok"] for k, v in RES.items()})
EOF
timeout 420 python3 /tmp/fs/check.py 2>&1 | tee "$OUT/device_check.log"
