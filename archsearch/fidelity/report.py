"""The report of a fidelity study: ``report.md`` and ``tau_vs_cost.png`` from ``fidelity.json``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from .stats import ENSEMBLE, _MIN_RANKED


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def plot_tau_vs_cost(result: dict, path: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sig = {n: v for n, v in result["signals"].items() if v.get("cost_s")}
    if not sig:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for n, v in sig.items():
        lo, hi = v["tau_ci"]
        ax.errorbar(v["cost_s"], v["tau"], yerr=[[v["tau"] - lo], [hi - v["tau"]]], fmt="o", capsize=3,
                    color="C3" if n == result["chosen"]["name"] else "C0")
        ax.annotate(n, (v["cost_s"], v["tau"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ceiling = result["noise_ceiling_tau"]
    ax.axhline(ceiling, color="C2", ls="--", lw=1, label=f"noise ceiling (seed vs seed) {ceiling:.2f}")
    ax.axhline(result["chosen"]["bar"], color="C1", ls=":", lw=1,
               label=f"bar min(0.6, 0.8 x ceiling) = {result['chosen']['bar']:.2f}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("cost per spec (s, CPU of the search machine; log)")
    ax.set_ylabel("Kendall tau vs long-training top-1")
    ax.set_title(f"proxy fidelity: {result['n_specs']} specs of {Path(result['space']).stem}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_DATA_WORDS = {
    "fashion-mnist": "real Fashion-MNIST photos, 10 classes, chance 0.10",
    "fashion-mnist-canvas": "Fashion-MNIST photos small on a cluttered canvas, 10 classes, chance 0.10",
    "digits": "scanned digits small on a cluttered canvas, 10 classes, chance 0.10",
    "glyphs": "the digit among letters in vector fonts, a scene in fractions of the side; 10 classes, chance 0.10; "
              "validation fonts held out",
}


def _macs_words(plan: dict) -> str:
    return f"{plan['macs_resolution']} px" if plan.get("macs_resolution") else "each spec's own sampled resolution"


def write_report(result: dict, out: Path) -> Path:
    out = Path(out)
    png = plot_tau_vs_cost(result, out / "tau_vs_cost.png")
    lines = [*_head(result), *_setup(result), *_choice(result), *_signal_table(result)]
    if png:
        lines += ["", f"![tau against cost]({png.name})"]
    lines += _scaling(result) + _specs(result)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _head(result: dict) -> List[str]:
    plan = result["plan"]
    ch = result["chosen"]
    return [
        f"# Proxy fidelity on `{result['space']}` ({result['n_specs']} specs + {ch['n_holdout']} held out)\n",
        f"Regenerate: `{result['command']}`. Every finished unit is in `runs.jsonl` (a rerun resumes from it); "
        f"devices: {', '.join(result['devices'])}.\n",
        *([f"**{len(result['skipped_lines'])} lines of `runs.jsonl` were skipped** (not a unit's record: "
           f"{'; '.join(result['skipped_lines'][:5])}); their units run again on the next run.\n"]
          if result.get("skipped_lines") else []),
        *([] if result["complete"] else [
            f"**Status: incomplete.** {result['n_specs']} of {plan['n']} specs and {ch['n_holdout']} of "
            f"{plan['n_holdout']} hold-out specs have both reference runs ({result['units']} of "
            f"{result['units_planned']} units finished); every figure below is on those specs only and the choice is "
            "preliminary. Rerun the command to continue: finished units are kept.\n"]),
    ]


def _setup(result: dict) -> List[str]:
    plan = result["plan"]
    t = plan["train"]
    return [
        "## Set-up\n",
        f"* Data: `{t['data']}` ({_DATA_WORDS.get(t['data'], 'an ImageFolder')}), {t['train_size']} training and "
        f"{t['val_size']} validation images at " + (
            f"{t['resolution']} px." if result.get("resolution_range") is None else
            f"each spec's input side: its sampled resolution (range {result['resolution_range']}) times the side rule "
            f"(sides {result['input_side_range']} px)."),
        f"* Trained copy of each spec: widths x{t['width_mult']}, depth cap {t['max_depth']}, batch {t['batch_size']}, "
        f"AdamW lr {t['lr']} (one-cycle), weight decay {t['weight_decay']}.",
        f"* Reference: validation top-1 after {plan['long_steps']} steps, seeds {plan['reference_seeds'][0]} and "
        f"{plan['reference_seeds'][1]}; target = their mean. Mean top-1 over the validations of the reference runs "
        f"(does the curve flatten?): " + ", ".join(f"step {k}: {v:.3f}" for k, v in result["learning_curves"].items()) + ".",
        f"* Signals from a third seed ({plan['signal_seed']}), so that no signal shares a run with the reference: zero-cost "
        f"proxies on one real batch of 64 at init; params and MACs of the full spec (MACs at {_macs_words(plan)}); "
        f"`train_top1@B` and `train_loss_sum@B` (sum of the training losses, negated so higher is better) of a separate "
        f"B-step training (its own one-cycle schedule); `ensemble` = mean rank of "
        f"{', '.join(ENSEMBLE).format(b0=min(plan['short_steps']))}"
        f" (fixed before any result was seen).",
        "* Cost per spec: median over specs, in seconds of the CPU the cost units ran on ("
        + (", ".join(d for d in result["devices"] if d.startswith("cpu")) or "none recorded") + "; training: start-up plus B x "
        "the "
        "per-step time measured on that CPU for each spec; zero-cost: measured there).",
        f"* Reference top-1 range (mean of seeds): {result['reference_top1_range']}.\n",
    ]


def _choice(result: dict) -> List[str]:
    plan = result["plan"]
    ch = result["chosen"]
    return [
        "## Noise ceiling and choice\n",
        f"* **Noise ceiling** (Kendall tau between the two reference seeds): **{_fmt(result['noise_ceiling_tau'])}** "
        f"(95% bootstrap {result['noise_ceiling_ci']}).",
        f"* Bar: min(0.6, 0.8 x ceiling) = {_fmt(ch['bar'])}.",
        ("* **Nothing can be chosen: the two reference seeds do not agree** (noise ceiling not above 0), so no signal "
         "can be judged against them. Train the references longer, or on more specs, before trusting any signal."
         if ch.get("judged") is False and ch["name"] is None and result["n_specs"] >= _MIN_RANKED else
         f"* **Chosen: `{ch['name']}`**, the cheapest signal at or above the bar "
         f"(tau {_fmt(ch['tau'])})." if ch["passed_bar"] else
         f"* **No signal reached the bar.** The best was `{ch['name']}` (tau {_fmt(ch['tau'])}); the shipped searches use it."
         if ch["name"] is not None else
         f"* **No signal scored yet**: a rank correlation needs at least {_MIN_RANKED} specs with both references."),
        f"* Hold-out check on {ch['n_holdout']} specs not used to choose: tau {_fmt(ch['tau_holdout'])} "
        f"(95% bootstrap {ch.get('tau_holdout_ci')}), hold-out noise ceiling {_fmt(ch.get('noise_ceiling_holdout'))}; "
        + ("reaches the bar." if ch.get("holdout_passed") else
           f"**not yet a confirmation**: {ch['n_holdout']} of {plan['n_holdout']} hold-out specs have their references."
           if ch["n_holdout"] < plan["n_holdout"] else "does **not** reach the bar."),
        "* The ceiling compares one seed with the other; signals are scored against the mean of both seeds, which "
        "is less noisy than either, so a signal can score above the ceiling.",
        *_within_choice(result),
    ]


def _within_choice(result: dict) -> List[str]:
    """Where the search decides: ranks pooled over the pairs of specs that share a resolution (or a token band)."""
    w = result.get("chosen_within_resolution")
    if not w:
        return []
    return [
        "\n## Where the search decides\n",
        "A search over resolution chooses among specs *at* a resolution (and within a token budget); a tau over the "
        "whole space also rewards a signal for telling resolutions and sizes apart. `tau within resolution` pools "
        "Kendall's tau-b over the pairs of specs that share a resolution, `tau within tokens` over the pairs that "
        "share a token band ((4^(k-1), 4^k] visual tokens); intervals resample specs within their group.",
        f"* Reference seed against seed: within resolution **{_fmt(result.get('noise_ceiling_within_resolution'))}** "
        f"({result.get('noise_ceiling_within_resolution_ci')}), within tokens {_fmt(result.get('noise_ceiling_within_tokens'))} "
        f"({result.get('noise_ceiling_within_tokens_ci')}).",
        (f"* **For the search's accuracy axis: `{w['name']}`**, the cheapest signal whose within-resolution tau reaches "
         f"min(0.4, 0.8 x that ceiling) = {_fmt(w['bar'])} with its interval above 0 (tau {_fmt(w['tau_within_resolution'])}, "
         f"{w['tau_within_resolution_ci']}); all that pass: {', '.join(f'`{n}`' for n in w['passing'])}." if w["passed_bar"] else
         f"* **No signal ranks within a resolution** to min(0.4, 0.8 x ceiling) = {_fmt(w['bar'])} with its interval above 0."),
    ]


def _signal_table(result: dict) -> List[str]:
    ch = result["chosen"]
    lines = [
        "\n## Every signal\n",
        f"Scored on the {result['n_specs']} main specs; the last column scores the same signal on the "
        f"{ch['n_holdout']} hold-out specs (not used to choose; with so few specs its interval is wide).\n",
        "| signal | tau | 95% CI | rho | tau, params partialled out | tau, MACs partialled out | top-quarter precision "
        "| tau within resolution [95% CI] | tau within tokens [95% CI] | top quarter at chance "
        "| CPU cost per spec (s) | hold-out tau [95% CI] |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for n, v in result["signals"].items():
        h = result.get("signals_holdout", {}).get(n)
        held = f"{_fmt(h['tau'])} [{h['tau_ci'][0]:.2f}, {h['tau_ci'][1]:.2f}]" if h and h.get("tau") is not None else "-"
        lines.append(f"| {n} | {_fmt(v['tau'])} | [{v['tau_ci'][0]:.2f}, {v['tau_ci'][1]:.2f}] | {_fmt(v['rho'])} | "
                     f"{_fmt(v['tau_partial_params'])} | {_fmt(v.get('tau_partial_macs'))} | "
                     f"{_fmt(v['top_quarter_precision'], 2)} "
                     f"| {_within(v, 'resolution')} | {_within(v, 'tokens')} | {_fmt(v.get('top_quarter_at_chance'), 2)} "
                     f"| {_fmt(v['cost_s'], 2)} | {held} |")
    return lines


def _within(v: dict, kind: str) -> str:
    t, ci = v.get(f"tau_within_{kind}"), v.get(f"tau_within_{kind}_ci")
    return "-" if t is None else f"{_fmt(t)} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else _fmt(t)


def _scaling(result: dict) -> List[str]:
    plan = result["plan"]
    t = plan["train"]
    lines: List[str] = []
    if result["scaling"]:
        lines += ["\n## Scaling subset\n",
                  f"The first {plan['n_scaling']} specs, trained {plan['long_steps']} steps with both reference seeds at each "
                  "(resolution, depth cap). `distinct` counts different trained copies (a depth cap makes specs that differ "
                  "only in deep stages identical). The plan's own scaling, used for the references, the signals and the "
                  f"library defaults, is {t['resolution']} px with depth cap {t['max_depth']}.\n",
                  "| scaling | specs | distinct | seed-vs-seed tau | top-1 range | tau vs the plan's scaling |",
                  "| --- | ---: | ---: | ---: | --- | ---: |"]
        for k, v in result["scaling"].items():
            lines.append(f"| {k} | {v['n']} | {v['distinct_trained_copies']} | {_fmt(v['seed_tau'])} | "
                         f"{v['top1_min']:.3f}-{v['top1_max']:.3f} | {_fmt(v.get('tau_vs_plan_scaling'))} |")
    return lines


def _specs(result: dict) -> List[str]:
    lines = []
    lines += ["\n## Specs\n", "| # | arch | top-1 seed A | top-1 seed B |", "| ---: | --- | ---: | ---: |"]
    for s in result["specs"]:
        lines.append(f"| {s['index']} | `{s['arch']}` | {s['reference_top1'][0]:.3f} | {s['reference_top1'][1]:.3f} |")
    return lines
