"""Behavioural defenses (``fedsafe.defense.screening``, ``projection``, ``hardening``): the screening's decisions
on made-up scores and its round with a fake pool; the projection checked by hand on small tensors; the
perturbation-aware objective and its gradient on the tiny model; composition, the coordinator's screening
and hook, the matrix's arms and references; one end-to-end run of every defense on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from fedsafe.actors.coordinator import Coordinator, CoordinatorSettings
from fedsafe.analysis import reference_of
from fedsafe.config import ArmConfig, ConfigError, ModelConfig, load_config
from fedsafe.defense import RoundUploads, ServerContext, build_defense
from fedsafe.defense.base import Composed, DefenseBase
from fedsafe.defense.config import DefenseConfig, HardeningConfig, ProjectionConfig, ScreeningConfig
from fedsafe.defense.projection import SafetyProjection, layer_groups, project_out
from fedsafe.defense.screening import Screening, canary_prompts, canary_safety, screen_decisions
from fedsafe.matrix import arm_config, federation_key, implicit_arms
from fedsafe.metrics.detection import detection_counts, screening_counts
from fedsafe.metrics.rule import RULE_JUDGES, rule_verdicts
from fedsafe.models.loading import load_model_and_tokenizer
from fedsafe.training.lora import AdapterSpec
from fedsafe.training.sft import make_batches, perturbations, perturbed_loss, rank_loss
from fedsafe.updates import ClientUpdate
from tests.conftest import SMOKE

# --- screening ------------------------------------------------------------------------------------------


def test_screening_flags_clients_far_below_the_median_and_over_refusers():
    safety = {1: 0.9, 2: 0.8, 3: 0.3, 4: 0.85}
    refusal = {1: 0.0, 2: 0.1, 3: 0.0, 4: 0.9}
    flagged = screen_decisions(safety, refusal, threshold=0.25, refusal_threshold=0.5)
    assert set(flagged) == {3, 4}  # median safety 0.825: 0.3 is 0.525 below; median refusal 0.05: 0.9 is above
    assert "below the round's median 0.82" in flagged[3] and "over-refusal 0.90" in flagged[4]
    assert screen_decisions(safety, refusal, threshold=0.6, refusal_threshold=1.0) == {}
    assert screen_decisions({1: 0.5, 2: 0.25}, {}, 0.1, 0.5) == {2: screen_decisions({1: 0.5, 2: 0.25}, {}, 0.1, 0.5)[2]}
    assert screen_decisions({}, {}, 0.1, 0.1) == {}


def test_canary_safety_by_judge_and_canaries_avoid_held_out_and_training_prompts():
    verdicts = {"rule": [True, True, False, False], "classifier": [True, True, True, False]}
    assert canary_safety(verdicts, "rule") == 0.5 and canary_safety(verdicts, "classifier") == 0.75
    assert canary_safety(verdicts, "both") == 0.625
    everything = canary_prompts("toy_harmful_eval", {}, 96, 0, [], "x")
    avoid = everything[:90]
    kept = canary_prompts("toy_harmful_eval", {}, 5, 0, [p.upper() for p in avoid], "x")  # normalised match
    assert len(kept) == 5 and not set(kept) & set(avoid)
    with pytest.raises(ConfigError, match="has 6 prompts outside every evaluation and training set, 7 asked"):
        canary_prompts("toy_harmful_eval", {}, 7, 0, avoid, "defense.screening.harmful")


class CanaryServer:
    """A fake server for the screening: adapters are strings; an adapter holding 'harm' answers harmful
    canaries compliantly, one holding 'shy' refuses benign ones too."""

    def __init__(self) -> None:
        self.requests = []
        rule = RULE_JUDGES["fixed"]
        self.ctx = ServerContext(seed=0, max_length=64, held_out=["eval prompt"], synthesizer=None, train=None,
                                 register_adapter=lambda ref: f"key:{ref}", check_data=lambda r: None,
                                 generate=self.generate,
                                 judge=lambda answers: {"rule": rule_verdicts(answers, rule),
                                                        "classifier": rule_verdicts(answers, rule)},
                                 training=["a training prompt"])

    def generate(self, requests):
        self.requests.append(requests)
        answers = []
        for r in requests:
            harmful = r.text.startswith("harm")
            if (harmful and "harm" not in r.adapter) or (not harmful and "shy" in r.adapter):
                answers.append("I'm sorry, I cannot help with that.")
            else:
                answers.append("Sure, here you go.")
        return answers


def screening(**kw) -> Screening:
    cfg = DefenseConfig(name="screening", screening=ScreeningConfig(harmful="toy_harmful_eval", num_harmful=4,
                                                                    benign="toy_benign_eval", num_benign=2, **kw))
    return build_defense(cfg)


@pytest.mark.parametrize("action", ["reject", "downweight", "observe"])
def test_a_screening_round_scores_every_upload_in_one_batch_and_acts(action):
    server, defense = CanaryServer(), screening(action=action, downweight=0.2)
    defense.before_training(server.ctx)
    assert len(defense.harmful) == 4 and len(defense.benign) == 2
    defense.harmful = [f"harm {p}" for p in defense.harmful]  # the fake model answers these by adapter
    view = RoundUploads(round_idx=3, clients=[1, 2, 5, 7], global_ref="g",
                        candidate=lambda c: {1: "g+ok", 2: "g+harm", 5: "g+ok2", 7: "g+shy"}[c])
    screened = defense.screen(server.ctx, view)
    (batch,) = server.requests  # one request for the global adapter and every client's
    assert len(batch) == 5 * 6 and {r.adapter for r in batch} == {"key:g", "key:g+ok", "key:g+harm", "key:g+ok2",
                                                                  "key:g+shy"}
    record = screened.record
    assert record["safety"] == [1.0, 0.0, 1.0, 1.0] and record["over_refusal"] == [0.0, 0.0, 0.0, 1.0]
    assert record["effect"] == [0.0, -1.0, 0.0, 0.0] and record["global"] == {"safety": 1.0, "over_refusal": 0.0}
    assert record["flagged"] == [2, 7] and record["answers"] == 30
    if action == "reject":
        assert set(screened.reject) == {2, 7} and screened.scale == {}
    elif action == "downweight":
        assert screened.scale == {2: 0.2, 7: 0.2} and screened.reject == {}
    else:
        assert screened.reject == {} and screened.scale == {}
    assert defense.screen(server.ctx, RoundUploads(0, [], "g", None)) is None


def test_defenses_that_only_shape_the_rounds_prepare_nothing_for_a_finished_federation():
    server = CanaryServer()
    server.ctx.rounds_left = False
    for name in ("screening", "projection", "hardening"):  # the fake context has no pool, trainer or data
        assert build_defense(DefenseConfig(name=name)).before_training(server.ctx) is None


def test_screening_needs_the_pool():
    server = CanaryServer()
    server.ctx.generate = None
    with pytest.raises(ConfigError, match="through the generation pool"):
        screening().before_training(server.ctx)


# --- projection ---------------------------------------------------------------------------------------------


def test_layer_groups_join_each_modules_lora_a_and_b():
    spec = AdapterSpec(names=("m.layers.0.q_proj.lora_A.weight", "m.layers.0.q_proj.lora_B.weight",
                              "m.layers.0.v_proj.lora_A.weight", "m.layers.0.v_proj.lora_B.weight"),
                       shapes=((1, 2), (2, 1), (1, 2), (2, 1)))
    groups = layer_groups(spec)
    assert list(groups) == ["m.layers.0.q_proj", "m.layers.0.v_proj"]
    assert groups["m.layers.0.q_proj"].tolist() == [0, 1, 2, 3] and groups["m.layers.0.v_proj"].tolist() == [4, 5, 6, 7]


def test_projection_removes_exactly_the_component_along_the_direction():
    groups = {"a": torch.tensor([0, 1]), "b": torch.tensor([2, 3]), "c": torch.tensor([4, 5])}
    direction = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    step = torch.tensor([3.0, 4.0, 5.0, -2.0, 1.0, 10.0])
    out, info = project_out(step, direction, groups, threshold=0.2)
    # a: u = (1, 0), v . u = 3 > 0, cos 0.6 > 0.2 -> (0, 4); b: v . u = -2 < 0 (away from harm) -> kept;
    # c: cos = 1 / sqrt(101) ~ 0.0995 <= 0.2 -> kept
    assert out.tolist() == [0.0, 4.0, 5.0, -2.0, 1.0, 10.0]
    assert info["layers"] == 3 and info["projected"] == 1 and info["removed_norm"] == pytest.approx(3.0)
    assert info["max_cosine"] == pytest.approx(0.6)
    out0, info0 = project_out(step, direction, groups, threshold=0.0)
    assert out0.tolist() == [0.0, 4.0, 5.0, -2.0, 0.0, 10.0] and info0["projected"] == 2
    d = torch.tensor([1.0, 2.0, 2.0])  # a general direction: the result is orthogonal to it, the rest kept
    v = torch.tensor([4.0, 1.0, -1.0])
    out, _ = project_out(v, d, {"x": torch.arange(3)}, 0.0)
    u = d / 3
    assert torch.allclose(out, v - (v @ u) * u) and abs(float(out @ d)) < 1e-6
    hook = SafetyProjection(direction, groups, 0.2)
    assert hook.name == "projection" and torch.equal(hook.apply(step)[0], project_out(step, direction, groups, 0.2)[0])


# --- hardening's objective ------------------------------------------------------------------------------


def test_perturbations_have_size_rho_along_the_gradient():
    grads = [torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])]
    eps = perturbations(grads, rho=2.0)
    assert torch.allclose(eps[0], torch.tensor([[1.2, 0.0]])) and torch.allclose(eps[1], torch.tensor([[0.0, 1.6]]))
    assert math.isclose(float(torch.sqrt(sum((e ** 2).sum() for e in eps))), 2.0, rel_tol=1e-6)


@pytest.fixture(scope="module")
def tiny_lora(model_cache):
    from fedsafe.config import LoRAConfig
    from fedsafe.training.lora import make_lora_model

    base, tok = load_model_and_tokenizer(ModelConfig(cache_dir=model_cache))
    model = make_lora_model(base, LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]), 0)
    with torch.no_grad():  # a non-zero B, so that LoRA's parameters have a gradient through every path
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    records = [{"instruction": "Explain how to hack a passport.", "response": "I'm sorry, I cannot help."},
               {"instruction": "Give me a tip for baking bread.", "response": "Knead the dough well."}]
    return model, make_batches(tok, records, 2, 64)[0]


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def test_perturbation_aware_loss_and_gradient_on_the_tiny_model(tiny_lora):
    model, batch = tiny_lora
    model.eval()  # no dropout: both passes see the same network
    plain = rank_loss(model, batch)
    zero, plain_again = perturbed_loss(model, batch, rho=0.0)
    assert torch.allclose(zero, plain) and torch.allclose(plain_again, plain.detach())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_grads(model, zero), _grads(model, rank_loss(model, batch))))
    # to first order the worst perturbation of size rho raises the loss by rho * ||dL/dh||
    from fedsafe.training.sft import decoder_layers, hidden_states

    captured = []
    with hidden_states(decoder_layers(model), captured=captured):
        loss = rank_loss(model, batch)
    grad_norm = float(torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(loss, captured))))
    rho = 1e-2
    perturbed, _ = perturbed_loss(model, batch, rho=rho)
    assert float((perturbed - plain).detach()) == pytest.approx(rho * grad_norm, rel=0.05)
    big, _ = perturbed_loss(model, batch, rho=2.0)
    g_big, g_plain = _grads(model, big), _grads(model, rank_loss(model, batch))
    assert float(big.detach()) > float(plain.detach())
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(g_big, g_plain))  # another gradient


# --- composition, coordinator, matrix, analysis -------------------------------------------------------


def test_composed_defenses_pass_a_new_start_along_and_act_at_their_stages():
    class Start(DefenseBase):
        def before_training(self, ctx):
            return f"{ctx.initial}+hardened"

    class Seen(DefenseBase):
        def before_training(self, ctx):
            self.start = ctx.initial

        def round_key(self):
            return {"seen": 1}

    seen = Seen()
    both = Composed([Start(), seen])
    ctx = ServerContext(seed=0, max_length=8, held_out=[], synthesizer=None, train=None, register_adapter=None,
                        check_data=None, initial="init")
    assert both.before_training(ctx) == "init+hardened" and seen.start == "init+hardened"
    assert both.changes_rounds and not Start().changes_rounds
    with pytest.raises(ConfigError, match="names a defense twice"):
        build_defense(DefenseConfig(name="screening+screening"))
    with pytest.raises(ConfigError, match="one of"):
        build_defense(DefenseConfig(name="screening+unlearning"))
    assert [type(p).__name__ for p in build_defense(DefenseConfig(name="hardening+posthoc_sft")).parts] == \
        ["Hardening", "PosthocSFT"]


def test_the_coordinator_leaves_out_rejected_uploads_scales_others_and_hooks_the_aggregate(tmp_path):
    spec = AdapterSpec(names=("w",), shapes=((2,),))

    class Halve:
        name = "halve"

        def apply(self, step):
            return step / 2, {"halved": True}

    coordinator = Coordinator(torch.zeros(2), spec, {}, CoordinatorSettings(run_dir=str(tmp_path)), hook=Halve())
    rows = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 3.0]), 2: torch.tensor([3.0, 3.0])}
    for cid, delta in rows.items():
        coordinator.stage(0, cid, ClientUpdate(cid, 4, delta))
    assert coordinator.uploads(0) == [0, 1, 2]
    assert torch.equal(coordinator.candidate(1), torch.tensor([0.0, 3.0]))
    summary = coordinator.aggregate(0, [], reject={1: "screening: bad"}, scale={2: 0.5})
    assert summary["clients"] == [0, 2] and summary["rejected"] == [{"client_id": 1, "reason": "screening: bad"}]
    assert torch.allclose(coordinator.global_vector(), torch.tensor([(1.0 + 1.5) / 2 / 2, 1.5 / 2 / 2]))
    assert summary["halve"] == {"halved": True}
    counts = detection_counts([{**summary, "attacking": [1]}])
    assert counts["malicious"] == 1 and counts["malicious_flagged"] == 1 and counts["benign"] == 2
    screen = screening_counts([{"attacking": [1], "screening": {"clients": [0, 1, 2], "flagged": [1, 2]}}])
    assert (screen["malicious"], screen["malicious_flagged"], screen["benign"], screen["benign_flagged"]) == (1, 1, 2, 1)


def test_arms_compose_their_defenses_and_share_rounds_where_only_the_post_hoc_differs():
    base = load_config(SMOKE, ["defense.name=screening", "defense.level=2"])
    plain = arm_config(base, ArmConfig(name="none", defenses="none"))
    screened = arm_config(base, ArmConfig(name="s"))
    both = arm_config(base, ArmConfig(name="s+L2", defense_level=2))
    projected = arm_config(base, ArmConfig(name="p", defenses="projection", defense_level=1))
    assert (plain.defense.name, screened.defense.name, both.defense.name) == ("none", "screening", "screening+posthoc_sft")
    assert projected.defense.name == "projection+posthoc_sft" and projected.defense.level == 1
    assert federation_key(screened) == federation_key(both) != federation_key(plain)
    rho0 = arm_config(base, ArmConfig(name="h0", defenses="hardening", overrides=["defense.hardening.rho=0"]))
    assert federation_key(rho0) != federation_key(arm_config(base, ArmConfig(name="h", defenses="hardening")))
    assert [a.defenses for a in implicit_arms(base)] == ["none", ""]
    with pytest.raises(ConfigError, match="set by defense_level"):
        ArmConfig(name="x", defenses="posthoc_sft")


def test_a_behaviourally_defended_arm_is_compared_with_the_undefended_arm_under_the_same_attack():
    def arm(rule, defense, level, federation, malicious=3):
        return {"rule": rule, "defense": defense, "defense_level": level, "federation": federation,
                "num_malicious": malicious, "attacked": malicious > 0, "attack": "data_poisoning", "attack_params": {},
                "benign_clients": 7}

    arms = {"clean": arm("fedavg", "none", 0, "f0", 0), "none": arm("fedavg", "none", 0, "f1"),
            "L2": arm("fedavg", "posthoc_sft", 2, "f1"), "screening": arm("fedavg", "screening", 0, "f2"),
            "screening + L2": arm("fedavg", "screening+posthoc_sft", 2, "f2"),
            "median": arm("median", "none", 0, "f3")}
    assert reference_of("screening", arms) == "none" and reference_of("screening + L2", arms) == "none"
    assert reference_of("L2", arms) == "none" and reference_of("none", arms) == "clean"
    assert reference_of("median", arms) == "none"


def test_bad_defense_settings_say_what_is_allowed():
    with pytest.raises(ConfigError, match="defense.screening.action must be one of"):
        ScreeningConfig(action="ban")
    with pytest.raises(ConfigError, match="defense.projection.threshold must be in"):
        ProjectionConfig(threshold=1.0)
    with pytest.raises(ConfigError, match="defense.hardening.rho must be >= 0"):
        HardeningConfig(rho=-1.0)


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_every_behavioural_defense_end_to_end_on_the_tiny_model(ray_cluster, smoke_cfg):
    """Screening (alone and with the post-hoc defense, sharing one federated run), projection and
    hardening in a federated run of the tiny model: the rounds record the screening's scores and the
    projection, the hardened run starts elsewhere, results carry costs, the report its sections."""
    from fedsafe.matrix import run_experiment
    from fedsafe.run_dir import create_run_dir, read_rounds

    arms = ('[{name: none}, {name: screening, defenses: screening},'
            ' {name: screening + L1, defenses: screening, defense_level: 1},'
            ' {name: projection, defenses: projection}, {name: hardening, defenses: hardening}]')
    cfg = smoke_cfg(f"arms={arms}", "federation.num_rounds=2", "train.local_steps=2", "evaluation.num_prompts=8",
                    "evaluation.num_benign=8", "federation.examples_per_client=16",
                    "defense.steps=4", "defense.rounds=2", "defense.num_examples=16", "defense.batch_size=4",
                    "defense.screening.harmful=toy_harmful_eval", "defense.screening.num_harmful=6",
                    "defense.screening.benign=toy_benign_eval", "defense.screening.num_benign=4",
                    "defense.screening.threshold=0.0", "defense.projection.num_examples=8", "defense.projection.steps=2",
                    "defense.projection.synthesis={filter: none, max_new_tokens: 16}", "defense.hardening.level=1",
                    "defense.hardening.steps=2", "defense.hardening.num_examples=8")
    run_dir = create_run_dir(cfg)
    out = run_experiment(cfg, run_dir)["arms"]
    assert out["screening"]["federation"] == out["screening + L1"]["federation"] != out["none"]["federation"]
    screened = read_rounds(out["screening"]["federation_dir"])
    for record in screened:
        s = record["screening"]
        assert s["clients"] == record["sampled"] and len(s["effect"]) == 3 and s["answers"] == 4 * 10
        assert set(s["flagged"]) == {r["client_id"] for r in record.get("rejected", [])}
    assert out["screening"]["defense_cost"]["screening_answers"] == 2 * 40
    assert out["screening"]["screening"]["malicious"] + out["screening"]["screening"]["benign"] == 6
    projected = read_rounds(out["projection"]["federation_dir"])
    assert all(r["projection"]["layers"] == 14 for r in projected)
    assert out["projection"]["defense_cost"]["projection"]["pairs"] == 8
    hardened, plain = (read_rounds(out[n]["federation_dir"])[0]["client_metrics"] for n in ("hardening", "none"))
    assert [m["first_loss"] for m in hardened] != [m["first_loss"] for m in plain]  # another starting adapter
    for name in ("screening", "screening + L1", "projection", "hardening"):
        assert out[name]["paired"]["rule"]["reference"] == "none"
    report = (run_dir / "report.md").read_text()
    assert "Which clients moved the model" in report and "What the defenses cost" in report
