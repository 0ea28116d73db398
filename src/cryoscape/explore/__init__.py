"""The interactive latent-space explorer (``cryoscape explore``): a plotly page and a loopback-only server.

``load_explorer_data`` reads a run; ``build_page`` makes the self-contained HTML; ``make_server`` serves it with
its JSON/PNG endpoints; ``export_selection`` writes a selection into ``RUN/explore_selections/NAME/``.
"""

from cryoscape.explore.data import ExplorerData, View, load_explorer_data, metadata_columns
from cryoscape.explore.export import SELECTION_DIR, SelectionExists, export_selection, validate_selection_indices
from cryoscape.explore.page import build_page
from cryoscape.explore.server import ExplorerServer, make_server

__all__ = [
    "ExplorerData",
    "View",
    "load_explorer_data",
    "metadata_columns",
    "SELECTION_DIR",
    "SelectionExists",
    "export_selection",
    "validate_selection_indices",
    "build_page",
    "ExplorerServer",
    "make_server",
]
