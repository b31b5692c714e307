"""SASS, the machine code a GPU runs, read without a GPU: find cuobjdump, disassemble a binary into
{kernel: instructions}, normalize it so two builds can be compared, and summarize what a variant's
kernels compile to (``tfm-kernels sass``).

    tfm-kernels sass matmul                     # every variant: registers, spills, instructions, mix
    tfm-kernels sass matmul 8                   # variant 8's kernels, opcode mix of the main loop
    tfm-kernels sass matmul 8 --kernel "false, false" --full    # the SASS itself

Used by the build tests (tensor-core kernels must show HMMA/HGMMA, TMA kernels UTMALDG), by
scripts/sass_diff.py, which proves a source refactor left the machine code of every kernel as it was
(the way kernels verified on a GPU are changed on a machine without one), and by the command above,
which compiles a variant's kernels exactly as the CuPy backend does (NVRTC, CuPy's options, cubin
for the chosen architecture), so what it prints is the code that backend runs.

cuobjdump and the nvdisasm it calls come from the CUDA toolkit or from the `nvidia-cuda-cuobjdump`
and `nvidia-cuda-nvdisasm` wheels (the `test` extra installs them: 5 MB, and the CI machine's
toolkit ships neither).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["cuobjdump", "dump_sass", "cubin_command", "classify", "words", "words_hash", "images",
           "name_expressions", "normalize", "opcode", "loops", "nvrtc_cubin", "parse_ptxas"]


def _wheel_bin() -> Path | None:
    """The bin/ folder of the nvidia-cuda-cuobjdump wheel (site-packages/nvidia/cu*/bin)."""
    for entry in sys.path:
        for cand in sorted(Path(entry).glob("nvidia/cu*/bin")) if entry else ():
            if (cand / "cuobjdump").is_file():
                return cand
    return None


@functools.lru_cache(maxsize=None)
def cuobjdump() -> tuple[str, dict[str, str]] | None:
    """(path to cuobjdump, environment to run it with) or None when there is none. The wheel's
    cuobjdump finds its nvdisasm through PATH, so that folder is put in front."""
    env = dict(os.environ)
    exe = shutil.which("cuobjdump")
    if exe is None:
        for var in ("CUDA_HOME", "CUDA_PATH"):
            home = os.environ.get(var)
            if home and (Path(home) / "bin" / "cuobjdump").is_file():
                exe = str(Path(home) / "bin" / "cuobjdump")
                break
    if exe is None:
        wheel = _wheel_bin()
        if wheel is None:
            return None
        exe = str(wheel / "cuobjdump")
    folder = str(Path(exe).parent)
    if not (Path(folder) / "nvdisasm").is_file() and shutil.which("nvdisasm") is None:
        wheel = _wheel_bin()  # a toolkit cuobjdump without nvdisasm: borrow the wheel's
        if wheel is None or not (wheel / "nvdisasm").is_file():
            return None
        folder = str(wheel)
    env["PATH"] = folder + os.pathsep + env.get("PATH", "")
    return exe, env


@functools.lru_cache(maxsize=None)
def dump_sass(path: str) -> dict[str, str]:
    """{mangled kernel name: SASS text} of every kernel in a cubin, object file or shared library
    (several ELF images: a name seen in more than one, e.g. sm_80 and sm_90, gets them joined).
    Cached per path: the whole extension takes about 20 s on two cores."""
    found = cuobjdump()
    if found is None:
        raise FileNotFoundError("cuobjdump (with nvdisasm) not found: install the nvidia-cuda-cuobjdump "
                                "and nvidia-cuda-nvdisasm wheels or a full CUDA toolkit")
    exe, env = found
    out = subprocess.run([exe, "--dump-sass", path], capture_output=True, text=True, env=env,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump --dump-sass {path} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    funcs: dict[str, str] = {}
    for chunk in re.split(r"\n\s*Function : ", out.stdout)[1:]:
        name, _, body = chunk.partition("\n")
        # The next ELF image's header ("Fatbin elf code", "code for sm_XX") is not code.
        body = body.split("\nFatbin ")[0]
        funcs[name.strip()] = funcs.get(name.strip(), "") + body
    return funcs


@functools.lru_cache(maxsize=None)
def launch_limits(path: str) -> dict[str, dict[str, int | None]]:
    """{mangled kernel name: {"max_threads": the block size its ``__launch_bounds__`` allows (None
    without), "registers": its register count}} of every kernel in a cubin, object file or shared
    library, from ``cuobjdump -elf`` (EIATTR_MAX_THREADS in the kernel's .nv.info section,
    EIATTR_REGCOUNT): what the driver checks a launch against. A name in several ELF images
    (sm_80 and sm_90) gets the largest register count and the smallest bound."""
    found = cuobjdump()
    if found is None:
        raise FileNotFoundError("cuobjdump not found: install the nvidia-cuda-cuobjdump wheel or a CUDA toolkit")
    exe, env = found
    out = subprocess.run([exe, "-elf", path], capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump -elf {path} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    limits: dict[str, dict[str, int | None]] = {}
    section = attribute = None  # the kernel whose .nv.info section this is; the attribute being read
    for line in out.stdout.splitlines():
        text = line.strip()
        if line.startswith("."):  # a section header: ".nv.info.<mangled>" is one kernel's
            section = line[len(".nv.info."):].strip() if line.startswith(".nv.info.") else None
            attribute = None
        elif text.startswith("Attribute:"):
            attribute = text.split(":", 1)[1].strip()
        elif text.startswith("Value:") and attribute == "EIATTR_REGCOUNT":
            m = re.search(r"function: (\S+)\(0x[0-9a-f]+\)\s+register count: (\d+)", text)
            if m:
                d = limits.setdefault(m.group(1), {"max_threads": None, "registers": 0})
                d["registers"] = max(int(d["registers"] or 0), int(m.group(2)))
        elif text.startswith("Value:") and attribute == "EIATTR_MAX_THREADS" and section:
            x, y, z = (int(t, 16) for t in text.split(":", 1)[1].split()[:3])
            d = limits.setdefault(section, {"max_threads": None, "registers": 0})
            d["max_threads"] = x * y * z if d["max_threads"] is None else min(d["max_threads"], x * y * z)
    return limits


def cubin_command(cmd: list[str], src: Path, csrc: Path, out: Path, ptxas_v: bool = False) -> list[str]:
    """A recorded nvcc build command (an extension build's, from a build/ptxas report's first line)
    turned into one that compiles `src` to a cubin `out` with `csrc` as include folder: -c/-o/-I and
    the host-side -Xcompiler flags dropped, -Xptxas -v kept only with `ptxas_v` (the figures a
    fingerprint compares), and of the gencode list the highest real sm_XX target (one cubin holds
    one architecture; sm_90 of the default "80;90", the H200's code). A recorded nvcc path that does
    not exist here is replaced by the nvcc on PATH."""
    nvcc = cmd[0] if Path(cmd[0]).is_file() else (shutil.which("nvcc") or cmd[0])
    args, rest, i = [nvcc], cmd[1:], 0
    while i < len(rest):
        a = rest[i]
        if a in ("-o", "-Xcompiler") or (a == "-Xptxas" and not ptxas_v):
            i += 2
            continue
        if a == "-c" or a.endswith(".cu") or a.startswith("-I"):
            i += 1
            continue
        args.append(a)
        i += 1
    gencodes = [a for a in args if a.startswith("-gencode") and "code=sm_" in a]
    sm = max(gencodes, key=lambda g: int(re.sub(r"\D", "", g.split("code=sm_")[1])))
    return [a for a in args if not a.startswith("-gencode")] + [sm, "-cubin", f"-I{csrc}", str(src),
                                                                 "-o", str(out)]


_ADDR = re.compile(r"/\*[0-9a-f]{4,}\*/")          # /*01a0*/ instruction address
_ENC = re.compile(r"/\* (0x[0-9a-f]{16}) \*/")      # /* 0x000fe20000000800 */ encoding word


def words(sass: str) -> list[str]:
    """The instruction words (the hex encodings cuobjdump prints beside each instruction): equal
    lists mean byte-identical code. Comparing the text instead would depend on cuobjdump's column
    padding, which follows the longest line of the whole file."""
    return _ENC.findall(sass)


def words_hash(sass: str) -> str:
    """sha256 of a kernel's instruction words: equal hashes mean byte-identical machine code."""
    import hashlib

    return hashlib.sha256(" ".join(words(sass)).encode()).hexdigest()


def images(sass: str) -> list[str]:
    """A kernel's SASS from dump_sass cut into its ELF images, one per architecture it was built
    for (addresses restart at 0 in each)."""
    starts = [m.start() for m in re.finditer(r"/\*0000\*/", sass)] or [0]
    return [sass[i:j] for i, j in zip(starts, starts[1:] + [len(sass)])]


def name_expressions(mangled: list[str]) -> dict[str, str]:
    """{C++ name expression as TFM_EXPORT spells it ("matmul_iter<128, ..., true, false>"): mangled
    name}, by c++filt: the demangled signature without its return type and parameter list."""
    exe = shutil.which("c++filt")
    if exe is None:
        raise FileNotFoundError("c++filt (binutils) not found")
    out = subprocess.run([exe], input="\n".join(mangled), capture_output=True, text=True, timeout=60).stdout
    result = {}
    for m, d in zip(mangled, out.splitlines()):
        d = d.removeprefix("void ")
        depth, cut = 0, len(d)
        for i, ch in enumerate(d):  # the parameter list: the first "(" outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        result[d[:cut]] = m
    return result


def classify(old: str | None, new: str | None) -> str:
    """One kernel's SASS at two revisions (None: absent there): "added", "removed", "identical"
    (the same instruction words, i.e. bytes), "same-insts" (the same instructions, other scheduling
    control words) or "differs"."""
    if old is None:
        return "added"
    if new is None:
        return "removed"
    if words(old) == words(new):
        return "identical"
    return "same-insts" if normalize(old) == normalize(new) else "differs"


def normalize(sass: str) -> list[str]:
    """The instructions only, one per line, whitespace folded: addresses and encodings dropped
    (the encoding words carry scheduling control bits, which follow the instructions; branch
    targets stay, so a moved block still shows)."""
    lines = []
    for line in sass.splitlines():
        line = _ENC.sub("", _ADDR.sub("", line)).strip()
        if not line or line.startswith((".", "//", "..")):
            continue
        lines.append(" ".join(line.split()))
    return lines


# ---------------------------------------------------------------------------------------------
# Reading a kernel: opcodes, loops, resources
# ---------------------------------------------------------------------------------------------

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA(?:\.\S+)?\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text) of every instruction, predicates kept."""
    return [(int(m.group(1), 16), " ".join(m.group(2).split())) for m in _INSN.finditer(sass)]


def opcode(insn: str) -> str:
    """The opcode with its first modifier (``HMMA.16816``, ``LDS.128``, ``FFMA``): the predicate
    and the operands dropped, and modifiers beyond the first folded (``LDG.E.128.CONSTANT`` counts
    as ``LDG.E``) so a mix stays readable."""
    parts = insn.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    if not parts:
        return ""
    return ".".join(parts[0].split(".")[:2])


def loops(sass: str) -> list[tuple[int, int, list[str]]]:
    """Every backward branch as a loop: (start address, end address, its instructions), innermost
    loops included as their own entries, longest first. A static view: the hot loop of a kernel is
    almost always the longest one holding its math (FFMA/HMMA/HGMMA)."""
    insns = instructions(sass)
    out = []
    for addr, text in insns:
        m = _BRANCH.match(text)
        if m and m.group(1) is not None:
            target = int(m.group(1), 16)
            if target <= addr:
                out.append((target, addr, [t for a, t in insns if target <= a <= addr]))
    return sorted(out, key=lambda x: -len(x[2]))


_MATH = ("FFMA", "HMMA", "HGMMA", "FMUL", "FADD", "MUFU")


def main_loop(sass: str) -> tuple[int, int, list[str]] | None:
    """The hot loop, statically: a loop holding tensor-core instructions (HMMA/HGMMA) first, then
    the most math instructions, then the shorter (tighter) loop."""
    best = None
    for lp in loops(sass):
        ops = [opcode(t).split(".")[0] for t in lp[2]]
        key = (sum(o in ("HMMA", "HGMMA") for o in ops), sum(o in _MATH for o in ops), -len(lp[2]))
        if key[1] and (best is None or key > best[0]):
            best = (key, lp)
    return best[1] if best else None


_PTXAS_FN = re.compile(r"Function properties for (\S+)\s*\n[^\n]*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
                       r"(\d+) bytes spill loads(?:\s*\n[^\n]*?Used (\d+) registers(?:, used (\d+) barriers)?"
                       r"(?:, (\d+) bytes smem)?)?")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """{mangled name: {registers, barriers, smem (static bytes), stack, spill_stores, spill_loads}}
    from a ``ptxas -v`` log (nvcc's or NVRTC's)."""
    out = {}
    for m in _PTXAS_FN.finditer(log):
        out[m.group(1)] = {"registers": int(m.group(5) or 0), "barriers": int(m.group(6) or 0),
                           "smem": int(m.group(7) or 0), "stack": int(m.group(2)),
                           "spill_stores": int(m.group(3)), "spill_loads": int(m.group(4))}
    return out


def nvrtc_cubin(source: str, names: list[str], cc: int = 90,
                csrc: Path | None = None) -> tuple[bytes, dict[str, str], str]:
    """Compile ``csrc/<source>`` for the name expressions ``names`` exactly as the CuPy backend does
    on a device of compute capability ``cc`` (its NVRTC options, a cubin); no GPU needed. ``csrc``:
    another copy of the sources (scripts/sass_diff.py --nvrtc compiles an older revision's).
    Returns (cubin, {name expression: mangled name}, the ptxas -v log)."""
    from cuda.bindings import nvrtc

    from . import _backend

    here = _backend.csrc_dir()
    code = _backend.nvrtc_code(source)
    opts_list = _backend.cupy_nvrtc_options(source, cc)
    if csrc is not None and Path(csrc).resolve() != here.resolve():
        path = (Path(csrc) / source).resolve()
        code = f'#line 1 "{path}"\n' + path.read_text()
        opts_list = tuple(f"-I{csrc}" if o == f"-I{here}" else o for o in opts_list)

    def ok(res, what):
        if res[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC {what} failed on {source}: {res[0]}")
        return res[1] if len(res) > 1 else None

    opts = [o.encode() for o in opts_list + ("--ptxas-options=-v",)]
    prog = ok(nvrtc.nvrtcCreateProgram(code.encode(), source.encode(), 0, [], []), "create")
    try:
        for n in names:
            ok(nvrtc.nvrtcAddNameExpression(prog, n.encode()), f"name expression {n}")
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = ok(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 ")
        if res[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC failed on {source}:\n{log[-4000:]}")
        size = ok(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
        cubin = b" " * size
        ok((nvrtc.nvrtcGetCUBIN(prog, cubin)[0],), "cubin")
        lowered = {n: ok(nvrtc.nvrtcGetLoweredName(prog, n.encode()), f"lowered name {n}").decode()
                   for n in names}
        return cubin, lowered, log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def variant_sass(variant, cc: int = 90) -> list[dict]:
    """One record per kernel of a registered variant: name expression, mangled name, ptxas figures,
    the SASS, compiled as the CuPy backend compiles it."""
    by_source: dict[str, list[str]] = collections.defaultdict(list)
    for source, name in variant.kernels:
        by_source[source].append(name)
    rows = []
    for source, names in by_source.items():
        cubin, lowered, log = nvrtc_cubin(source, names, cc)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            sass = dump_sass.__wrapped__(f.name)
        res = parse_ptxas(log)
        for n in names:
            low = lowered[n]
            rows.append({"source": source, "kernel": n, "mangled": low, "sass": sass.get(low, ""),
                         **res.get(low, {})})
    return rows


def mix_line(insns: list[str], top: int) -> str:
    """``FFMA 512, LDS.128 64, ...``: the `top` most frequent opcodes, and any HMMA/HGMMA."""
    c = collections.Counter(opcode(t) for t in insns)
    shown = c.most_common(top)
    # Tensor-core instructions are few and do most of the work: always show them.
    shown += [(k, v) for k, v in c.items() if k.startswith(("HMMA", "HGMMA")) and (k, v) not in shown]
    return ", ".join(f"{k} {v}" for k, v in shown)


def add_sass_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("op", help="softmax, softmax_backward, matmul, attention_forward, attention_backward")
    p.add_argument("variant", nargs="?", help="number or name (default: every variant of the op)")
    p.add_argument("--kernel", default="", help="only kernels whose name expression contains this text")
    p.add_argument("--cc", type=int, default=90, help="compute capability to compile for (default 90)")
    p.add_argument("--top", type=int, default=10, help="opcodes shown per mix (default 10)")
    p.add_argument("--full", action="store_true", help="print the SASS of each kernel")


def run_sass(args: argparse.Namespace) -> int:
    from . import _registry

    if cuobjdump() is None:
        print("cuobjdump/nvdisasm not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm "
              "(the test extra) or put a CUDA toolkit's bin/ on PATH", file=sys.stderr)
        return 2
    try:
        chosen = ([_registry.get(args.op, args.variant)] if args.variant is not None
                  else _registry.variants(args.op))
    except (KeyError, ValueError) as e:
        print(f"tfm-kernels sass: {e}", file=sys.stderr)
        return 2
    print(f"# SASS of {args.op} compiled as the CuPy backend compiles it (NVRTC, sm_{args.cc}); static "
          "counts: each instruction once, however often it runs")
    for v in chosen:
        if v.arch > args.cc:
            print(f"\n{v.qualname}: needs sm_{v.arch}, skipped for sm_{args.cc}")
            continue
        print(f"\n{v.qualname}: {v.description}")
        for r in variant_sass(v, args.cc):
            if args.kernel not in r["kernel"]:
                continue
            insns = [t for _, t in instructions(r["sass"])]
            spill = r.get("spill_stores", 0) + r.get("spill_loads", 0)
            print(f"  {r['kernel']}: {r.get('registers', '?')} registers, "
                  f"{r.get('smem', 0)} B static smem, {r.get('stack', 0)} B stack"
                  f"{f', SPILLS {spill} B' if spill else ''}, {len(insns)} instructions")
            print(f"    whole kernel: {mix_line(insns, args.top)}")
            lp = main_loop(r["sass"])
            if lp is not None:
                print(f"    main loop (0x{lp[0]:x}-0x{lp[1]:x}, {len(lp[2])} instructions): "
                      f"{mix_line(lp[2], args.top)}")
            if args.full:
                print("\n".join(f"      /*{a:04x}*/ {t}" for a, t in instructions(r["sass"])))
    return 0
