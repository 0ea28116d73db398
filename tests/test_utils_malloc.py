import platform

import torch

from cryoscape.utils import malloc


def test_keep_freed_memory_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    malloc.keep_freed_memory.cache_clear()
    monkeypatch.setenv("CRYOSCAPE_KEEP_FREED_MEMORY", "0")
    assert malloc.keep_freed_memory() is False
    malloc.keep_freed_memory.cache_clear()
    monkeypatch.delenv("CRYOSCAPE_KEEP_FREED_MEMORY")
    applied = malloc.keep_freed_memory()
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    big = torch.ones(16 << 20)  # 64 MB: now from the heap; allocating, freeing and trimming still work
    assert float(big.sum()) == 16 << 20
    del big
    malloc.malloc_trim()
