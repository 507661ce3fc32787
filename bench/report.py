"""``python -m bench report``: docs/benchmarks.md (+ docs/benchmarks.png) from the results JSON.

The prose lives in ``bench/doc_template.md``; every number comes from the JSON, so a rerun
on another machine regenerates the whole page.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from bench.tables import (
    HTTP_ROWS,
    KERNEL_IMPLS,
    batching_table,
    fmt,
    headline,
    http_table,
    kernel_table,
    mc_table,
    train_table,
    v2_table,
)

TEMPLATE = Path(__file__).with_name("doc_template.md")


def sections(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split an ``all`` JSON into its sections; a single-section JSON becomes that one section."""
    known = ("kernel", "http", "http_cores", "v2", "batching", "overload", "coldstart", "train")
    if any(k in results for k in known):
        return {k: results.get(k) or {} for k in known}
    guess = {
        "kernel": "ratio_to_gemm_limit_b32_t100",
        "http": "predict_rps_c64",
        "http_cores": "mc_http_efficiency_per_core_c64",
        "v2": "v2_http_vs_triton_c64",
        "batching": "batching_rps_gain_c64",
        "overload": "overload_flood_max_s",
        "coldstart": "cold_start_s_median",
        "train": "train_speedup_vs_dataloader",
    }
    return {k: (results if key in results else {}) for k, key in guess.items()}


def plot(sec: dict[str, dict[str, Any]], path: Path) -> bool:
    """Two panels: HTTP req/s per server and concurrency; kernel µs/image vs T at B=32. False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, k = sec["http"], sec["kernel"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    servers = [(n, key) for n, key in HTTP_ROWS if h.get(f"{key}_rps_c1") is not None]
    width = 0.8 / 3
    for i, c in enumerate((1, 16, 64)):
        xs = [j + (i - 1) * width for j in range(len(servers))]
        ax1.bar(xs, [h.get(f"{key}_rps_c{c}") or 0 for _, key in servers], width, label=f"c={c}")
    labels = [n.replace("`", "").replace(" (", "\n(") for n, _ in servers]
    ax1.set_xticks(range(len(servers)), labels, fontsize=7, rotation=20)
    ax1.set_ylabel("requests / s")
    ax1.set_title("HTTP throughput (wrk, one image per request)")
    ax1.legend()
    matrix = k.get("matrix") or []
    for name, key in KERNEL_IMPLS:
        pts = sorted((r["n_samples"], r["us_per_image"]) for r in matrix
                     if r["impl"] == key and r["batch"] == 32 and r["us_per_image"])  # fmt: skip
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("MC samples T")
    ax2.set_ylabel("µs per image (B=32)")
    ax2.set_title("MC-dropout cost per image")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return bool(servers or matrix)


def render(results: dict[str, Any], plot_name: str) -> str:
    sec = sections(results)
    m = results.get("machine", {})
    cold = sec["coldstart"]
    cold_text = (
        f"{fmt(cold.get('cold_start_s_median'), 2)} s median over {len(cold.get('cold_start_s_all') or [])} starts"
        if cold.get("cold_start_s_median") is not None
        else f"not measured ({cold.get('cold_start_error') or 'not run'})"
    )
    conditions = {name: s.get("conditions") for name, s in sec.items() if s.get("conditions")}
    load = [m.get("load_average_1m_at_start"), m.get("load_average_1m_at_end")]
    cores = m.get("cores") or 1
    # Only the start says whether other work was running: by the end the benchmark's own servers, wrk and the
    # training section have loaded the cores themselves.
    busy = isinstance(load[0], int | float) and load[0] > 0.5 * cores
    load_note = (
        f"1-minute load average {fmt(load[0], 2)} at start; {fmt(load[1], 2)} at the end, which is the benchmark's "
        "own load (servers, wrk, training)"
    )
    if busy:
        load_note = (
            f"**{load_note}, on {cores} cores: the machine was busy with other work when this run started, so these "
            "numbers (kernel timings with 2 threads above all) are distorted; rerun on an idle machine before "
            "quoting them.**"
        )
    return string.Template(TEMPLATE.read_text()).substitute(
        date=m.get("date", "?"),
        machine=f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('platform', '?')}, "
        f"Python {m.get('python', '?')}",
        command=m.get("command", "?")
        + "".join(
            f"`, then its {section} section again ({m[f'{section}_section_rerun']}): `python -m bench {section}"
            for section in ("http", "v2")
            if m.get(f"{section}_section_rerun")
        ),
        load=load_note,
        headline=headline(sec),
        kernel_table=kernel_table(sec["kernel"]),
        http_table=http_table(sec["http"]),
        v2_table=v2_table(sec["v2"]),
        batching_table=batching_table(sec["batching"]),
        mc_table=mc_table(sec["http"]),
        mc_cores_table=mc_table(sec["http_cores"], with_ab=False),
        cores_workers=(sec["http_cores"].get("conditions") or {}).get("server_workers", "?"),
        train_table=train_table(sec["train"]),
        cold_start=cold_text,
        plot=plot_name,
        conditions="```json\n" + json.dumps(conditions, indent=2, sort_keys=True) + "\n```",
    )


def write(json_path: Path, doc_path: Path) -> None:
    results = json.loads(json_path.read_text())
    png = doc_path.with_suffix(".png")
    plot(sections(results), png)
    doc_path.write_text(render(results, png.name))
    print(f"bench: wrote {doc_path} and {png}")
