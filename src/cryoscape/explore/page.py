"""The explorer page: one self-contained HTML file (plotly.js inline, the data as embedded JSON, no network).

The scatter is a plotly figure built here in Python; ``explorer.js`` (beside this module) only switches the view
and the colouring, reports the lasso/box selection, exports it and shows the map at a clicked point. In server
mode the page fetches colour columns, volume thumbnails and posts selections to the server's ``api/`` endpoints
(relative URLs); a static page (``--write-html``) embeds every column and downloads the index list instead.
"""

from __future__ import annotations

import html
import json
from importlib import resources

import numpy as np

__all__ = ["SCATTERGL_THRESHOLD", "page_data", "build_figure", "build_page", "compact_floats"]

# above this many points the WebGL scatter is used (SVG stays faster to start and needs no GPU below it)
SCATTERGL_THRESHOLD = 20000


def compact_floats(values, significant: int = 6) -> list:
    """``values`` ``(N,)`` as a JSON-ready list rounded to ``significant`` digits (NaN/Inf -> None)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(arr)
    scale = np.abs(arr[finite]).max() if finite.any() else 0.0
    decimals = 6 if scale == 0 else int(np.clip(significant - 1 - np.floor(np.log10(scale)), 0, 15))
    out = np.round(np.where(finite, arr, 0.0), decimals).tolist()
    if not finite.all():
        out = [v if ok else None for v, ok in zip(out, finite.tolist(), strict=True)]
    return out


def _palette() -> list[str]:
    from plotly.colors import qualitative

    return list(qualitative.Plotly) + list(qualitative.Dark24) + list(qualitative.Light24)


def _cluster_colorscale(k: int) -> list:
    """A stepped colour scale giving cluster ``c`` (with ``cmin=-0.5``, ``cmax=k-0.5``) one palette colour."""
    pal = _palette()
    scale = []
    for c in range(k):
        color = pal[c % len(pal)]
        scale += [[c / k, color], [(c + 1) / k, color]]
    return scale


def page_data(data, server: bool, embed_metadata: bool | None = None) -> dict:
    """The JSON document the page's script reads.

    Latent columns are always embedded; metadata columns only for a static page (``embed_metadata`` default
    ``not server``) — the server sends them on request.
    """
    embed_metadata = (not server) if embed_metadata is None else embed_metadata
    k = int(data.labels.max()) + 1
    columns = {name: compact_floats(data.column(name)) for name in data.latent_column_names()}
    if embed_metadata:
        columns.update({name: compact_floats(v) for name, v in data.metadata.items()})
    particles = data.particles
    return {
        "title": f"{data.run_dir.name}, epoch {data.epoch}",
        "server": bool(server),
        "n": data.n,
        "n_input": data.n_input,
        "zdim": data.zdim,
        "epoch": data.epoch,
        "views": {name: {"x": compact_floats(v.xy[:, 0]), "y": compact_floats(v.xy[:, 1]), "axes": list(v.axes)}
                  for name, v in data.views.items()},
        "default_view": "UMAP" if "UMAP" in data.views else next(iter(data.views)),
        "input_index": data.input_indices.tolist(),
        "cluster": data.labels.tolist(),
        "k": k,
        "cluster_colorscale": _cluster_colorscale(k),
        "label_source": data.label_source,
        "color_options": ["cluster"] + data.latent_column_names() + list(data.metadata),
        "columns": columns,
        "subset_format": None if particles is None else ("cs" if getattr(particles, "source_format", "") == "cs"
                                                         else "star"),
        "particles_problem": data.particles_problem,
    }


def build_figure(data, doc: dict):
    """The plotly figure of the default view, coloured by cluster (one trace: point ``i`` is run particle ``i``).

    The arrays come from ``data`` as numpy arrays (plotly sends them base64-encoded, fast for large ``N``).
    """
    import plotly.graph_objects as go

    view = data.views[doc["default_view"]]
    n, k = data.n, doc["k"]
    trace_type = go.Scattergl if n > SCATTERGL_THRESHOLD else go.Scatter
    marker = dict(color=data.labels.astype(np.int32), colorscale=doc["cluster_colorscale"], cmin=-0.5, cmax=k - 0.5,
                  size=float(np.clip(600 / np.sqrt(n), 2, 8)), opacity=0.8, showscale=True,
                  colorbar=dict(title=dict(text="cluster"), tickmode="array" if k <= 40 else "auto",
                                tickvals=list(range(k)) if k <= 40 else None))
    trace = trace_type(x=view.xy[:, 0], y=view.xy[:, 1], mode="markers", marker=marker,
                       customdata=np.column_stack([data.input_indices, data.labels]).astype(np.int32),
                       hovertemplate="particle %{customdata[0]}<br>cluster %{customdata[1]}<extra></extra>")
    fig = go.Figure(trace)
    fig.update_layout(template="plotly_white", dragmode="lasso", hovermode="closest", clickmode="event",
                      margin=dict(l=60, r=20, t=20, b=50), uirevision="explorer",
                      xaxis=dict(title=dict(text=view.axes[0])), yaxis=dict(title=dict(text=view.axes[1])))
    return fig


def _json_for_script(doc: dict) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can appear)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 8px 16px; background: #f3f4f6; border-bottom: 1px solid #ddd; }
header h1 { font-size: 17px; margin: 0 0 4px 0; }
header .info { font-size: 13px; color: #555; }
main { display: flex; gap: 12px; padding: 8px 16px; }
#plot-column { flex: 3; min-width: 0; }
#side { flex: 1; min-width: 260px; font-size: 14px; overflow-wrap: anywhere; }
.controls { display: flex; gap: 14px; align-items: center; flex-wrap: wrap; margin: 6px 0; font-size: 14px; }
#side section { border: 1px solid #ddd; border-radius: 6px; padding: 8px; margin-bottom: 10px; }
#side h2 { font-size: 14px; margin: 0 0 6px 0; }
#volume-img { max-width: 100%; display: none; }
#status.error, #volume-caption.error { color: #b00020; }
code { background: #f3f4f6; padding: 0 3px; }
"""


def build_page(data, server: bool) -> str:
    """The complete HTML page for ``data`` (an :class:`~cryoscape.explore.data.ExplorerData`)."""
    import plotly.io as pio

    doc = page_data(data, server)
    fig = build_figure(data, doc)
    plot_html = pio.to_html(fig, full_html=False, include_plotlyjs=True, div_id="cryoscape-plot",
                            default_height="640px",
                            post_script="window.cryoscapeExplorer(document.getElementById('{plot_id}'));",
                            config={"displaylogo": False, "scrollZoom": True, "responsive": True,
                                    "modeBarButtonsToRemove": ["sendChartToCloud"]})
    script = resources.files("cryoscape.explore").joinpath("explorer.js").read_text(encoding="utf-8")
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in doc["views"])
    colors = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in doc["color_options"])
    title = html.escape(doc["title"])
    if server:
        export_help = (f"Writes <code>{html.escape(str(data.run_dir.resolve()))}/explore_selections/NAME/</code>: "
                       "indices.npy, indices.txt" + (f" and particles.{doc['subset_format']}"
                                                     if doc["subset_format"] else "") + ".")
        volume_help = "Click a point to see the map at its latent coordinate."
    else:
        export_help = ("Downloads the selected particle indices (one per line); write the STAR/.cs subset with "
                       "<code>cryoscape filter RUN --ind FILE -o DIR</code>.")
        volume_help = "Maps of clicked points need the server: <code>cryoscape explore RUN</code>."
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cryoscape explore: {title}</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<script id="cryoscape-data" type="application/json">{_json_for_script(doc)}</script>
<script>{script}</script>
<header>
<h1>cryoscape explore: {title}</h1>
<div class="info">{data.n} particles, zdim {data.zdim}; clusters: {html.escape(data.label_source)}</div>
</header>
<main>
<div id="plot-column">
<div class="controls">
<label>view <select id="view-select">{options}</select></label>
<label>colour by <select id="color-select">{colors}</select></label>
<span id="selection-count">0 selected</span>
</div>
{plot_html}
</div>
<div id="side">
<section>
<h2>Selection</h2>
<p>Use the lasso or box tool of the plot, then export.</p>
<label>name <input id="selection-name" value="" placeholder="selection_NNN" maxlength="64"
 pattern="[A-Za-z0-9_\\-]{{1,64}}"></label>
<button id="export-button" disabled>Export selection</button>
<p class="help">{export_help}</p>
<p id="status" role="status"></p>
</section>
<section>
<h2>Map at a point</h2>
<p>{volume_help}</p>
<img id="volume-img" alt="central sections of the map at the clicked particle's latent">
<p id="volume-caption"></p>
</section>
</div>
</main>
</body>
</html>
"""
