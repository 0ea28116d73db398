"""Small shared helpers (atomic file writing)."""

from cryoscape.utils.atomic import atomic_path, atomic_write_text, check_writable_dir

__all__ = ["atomic_path", "atomic_write_text", "check_writable_dir"]
