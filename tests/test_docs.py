"""The documentation names only files that are in the repository, and cites the papers it builds on properly."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository paths as the docs write them (other projects' paths, such as RELION's src/jaz/..., are not matched)
REPO_PATH = re.compile(r"``?((?:docs|src/cryoscape|tests|bench|shared)/[^`\s]+?)``?")
PLACEHOLDER = re.compile(r"[*<>{}]|NNN|NAME|\.\.\.")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "src").rglob("*.py"))]


def test_documents_name_only_files_of_the_repository():
    missing = []
    for doc in _documents():
        for path in REPO_PATH.findall(doc.read_text()):
            path = path.split(":")[0].rstrip(".,;)")
            if not PLACEHOLDER.search(path) and not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing


def test_the_three_papers_are_cited_with_journal_year_and_doi():
    refs = (ROOT / "docs" / "references.md").read_text()
    for doi in ("10.1038/s41592-020-01049-4", "10.1038/s41592-024-02210-z", "10.1038/s41592-023-02031-6"):
        assert f"https://doi.org/{doi}" in refs, doi
    assert refs.count("*Nature Methods*") == 3
    readme = (ROOT / "README.md").read_text()
    assert "docs/references.md" in readme
