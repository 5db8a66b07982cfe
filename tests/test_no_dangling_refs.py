"""Everything a user reads (the package, its docs, examples, benches, README and the C++/CUDA sources) may
cite only files that ship with the repository: a docstring that says "see solvers.md §6.5" is a dead end
for a reader who installed the package. The scan finds

* file names with a documentation extension (``name.md``, ``name.txt``, …), bare or with a directory part,
* source file names (``name.py``, ``name.h``, …) with a directory part, or bare in backticks (a bare
  ``self.h`` is an attribute, not a file), and
* absolute paths into the machine the project was written on (``/work/...``),

(``#include <...>`` lines name system headers and are skipped), and requires each to resolve to a file of the repository: a path relative to the repository root, to the
citing file's directory, to ``python/`` or ``csrc/`` (the import / include roots), or a bare name that some
file of the repository carries. Names of files of other projects (a peer library's module, a generated
file) are listed in ``_EXTERNAL`` with the reason.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("python", "docs", "examples", "bench", "csrc", "README.md")
TEXT_EXT = (".py", ".md", ".h", ".hpp", ".cpp", ".cu", ".cuh", ".txt", ".toml", ".cfg", ".cmake", ".rst")
SKIP_DIRS = {"__pycache__", ".git", "build", "plots"}
REF_EXT = r"(?:md|txt|py|h|hpp|cpp|cu|cuh|toml|rst|ipynb)"
# a path-ish token ending in a referenced extension, not part of a longer identifier/URL
REF = re.compile(r"(?<![\w./\-:@])((?:/?[\w.\-]+/)*[\w\-][\w.\-]*\." + REF_EXT + r")(?![\w(])")
URL = re.compile(r"\b(?:https?|file)://\S+")

#: names that are not files of this repository on purpose: {name: why}
_EXTERNAL = {
    "setup.py": "generic packaging term",
    "conditional_flow_matching.py": "torchcfm's module (peer library)",
    "sampling.py": "k-diffusion's module (peer library)",
    "utils.py": "k-diffusion's module (peer library)",
    "k_diffusion/sampling.py": "k-diffusion's module (peer library)",
    "dpm_solver.py": "the DPM-Solver reference implementation (peer library)",
    "uni_pc.py": "the UniPC reference implementation (peer library)",
    "_version.py": "written by the build (setuptools-scm style)",
    "DIR/RESULTS.md": "placeholder of a command-line argument",
}


_CODE_EXT = ("py", "h", "hpp", "cpp", "cu", "cuh")


def _quoted(line, m):
    return m.start() > 0 and line[m.start() - 1] in "`'\"" and m.end() < len(line) and line[m.end()] in "`'\""


def _repo_files():
    files = set()
    for d, dirs, names in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith(".")]
        for n in names:
            files.add(os.path.relpath(os.path.join(d, n), ROOT).replace(os.sep, "/"))
    return files


def _scanned_files():
    out = []
    for top in SCANNED:
        p = os.path.join(ROOT, top)
        if os.path.isfile(p):
            out.append(p)
            continue
        for d, dirs, names in os.walk(p):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith(".")]
            out.extend(os.path.join(d, n) for n in names if n.endswith(TEXT_EXT))
    return sorted(out)


def _resolves(ref, citing, files, basenames):
    if ref in _EXTERNAL or ref.rsplit("/", 1)[-1] in _EXTERNAL and "/" not in ref:
        return True
    if ref.startswith("/"):
        return True  # a user-side example path (/tmp/...); /work/... is reported by the caller
    ref = ref[2:] if ref.startswith("./") else ref
    if "/" not in ref:
        return ref in basenames
    here = os.path.relpath(os.path.dirname(citing), ROOT).replace(os.sep, "/")
    for base in ("", here + "/", "python/", "csrc/", "python/diffcore/"):
        cand = os.path.normpath(base + ref).replace(os.sep, "/")
        if cand in files or any(f.startswith(cand + "/") for f in files):
            return True
    return False


def _scan(text, citing, files, basenames):
    """``(line number, reference)`` of every reference in ``text`` that does not resolve."""
    bad = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#include <"):
            continue
        line = URL.sub(" ", line)
        bad.extend((lineno, m.group(0)) for m in re.finditer(r"/work/[\w./\-]*", line))
        for m in REF.finditer(line):
            ref = m.group(1)
            if ref.startswith("/work/"):
                continue  # reported above
            if "/" not in ref and ref.rsplit(".", 1)[1] in _CODE_EXT and not _quoted(line, m):
                continue
            if not _resolves(ref, citing, files, basenames):
                bad.append((lineno, ref))
    return bad


def dangling_refs():
    files = _repo_files()
    basenames = {f.rsplit("/", 1)[-1] for f in files}
    bad = []
    for path in _scanned_files():
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        rel = os.path.relpath(path, ROOT)
        bad.extend(f"{rel}:{lineno}: {ref}" for lineno, ref in _scan(text, path, files, basenames))
    return bad


def test_the_scanner_finds_what_it_should():
    files = {"docs/design.md", "python/diffcore/losses.py", "csrc/core/picard.h"}
    basenames = {f.rsplit("/", 1)[-1] for f in files}
    citing = os.path.join(ROOT, "python", "diffcore", "x.py")
    ok = ["docs/design.md", "design.md", "csrc/core/picard.h", "core/picard.h", "diffcore/losses.py",
          "losses.py", "setup.py"]
    for ref in ok:
        assert _resolves(ref, citing, files, basenames), ref
    for ref in ("solvers.md", "DESIGN.md", "spec/training.md", "docs/nothing.md",
                "004_e26ce74bb5fbe391.txt"):
        assert not _resolves(ref, citing, files, basenames), ref
    line = "see solvers.md §6.5 and docs/design.md, https://x.org/a/b.md, np.save, x.py_attr, DESIGN.md."
    found = [m.group(1) for m in REF.finditer(URL.sub(" ", line))]
    assert found == ["solvers.md", "docs/design.md", "DESIGN.md"], found
    text = ("x = self.h  # attribute\n#include <cuda_runtime.h>\nsee `kernel.h` and core/picard.h\n"
            "read /work/shared/spec/solvers.md or /tmp/out.txt\n")
    assert _scan(text, citing, files, basenames) == [(3, "kernel.h"), (4, "/work/shared/spec/solvers.md")]


def test_no_reference_to_a_file_the_repository_does_not_ship():
    bad = dangling_refs()
    if bad:
        pytest.fail(f"{len(bad)} reference(s) to files this repository does not contain:\n" + "\n".join(bad))
