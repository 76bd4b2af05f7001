"""Replays the Dockerfile's build without Docker (used by docker-build.sh).

1. The build context: every file under the repository that `.dockerignore` lets
   through, decided by Docker's own rules (moby/patternmatcher, which BuildKit uses):
   a pattern is cleaned like Go's filepath.Clean, a leading `/` is dropped, `*` and
   `?` never cross a `/`, `**` crosses any number of directories, `!` re-includes,
   the last matching pattern wins, and a pattern matching a parent directory matches
   everything below it. No file list is kept by hand.
2. The stages the last (runtime) stage copies from, instruction by instruction, in a
   scratch root folder standing for `/`: FROM, WORKDIR, ENV, ARG, COPY from the
   context, and RUN of `&&`-joined `cargo`, `mkdir` and `cp` commands, with
   `--mount=type=cache` mounts as persistent folders. Any other instruction, flag or
   shell construct in those stages stops the check: a replay that skipped what it does
   not understand would pass for a build that Docker fails.
3. The runtime stage's `COPY --from=<stage>` lines, then every binary that a
   docker-compose.yml service built from this Dockerfile runs (its `command`) must be
   in the runtime image's folders and answer `--help`.

`python docker_build.py selftest` checks the .dockerignore matcher against the
examples of Docker's documentation.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]


class Refused(Exception):
    """Something in the Dockerfile this replay does not interpret."""


# --- .dockerignore ----------------------------------------------------------------


def go_clean(path):
    """Go's path.Clean: lexical normalisation of a slash-separated path."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    out = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def read_dockerignore(text):
    """The patterns of a .dockerignore, as moby's ignorefile.ReadAll returns them."""
    patterns = []
    for number, line in enumerate(text.splitlines()):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = go_clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append("!" + line if invert else line)
    return patterns


def compile_pattern(pattern):
    """moby/patternmatcher's Pattern.compile and Pattern.match: a function path -> bool.

    Like moby, a pattern without wildcards is compared as is, `prefix/**` and `**suffix`
    by prefix and suffix, and anything else by a regular expression."""
    regex, i, kind, runes = "^", 0, "exact", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1  # `**/` is `**`
                if i + 1 == len(pattern):
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regexp"
                else:
                    regex += "(.*/)?"
                    kind = "regexp"
                if runes == 0:
                    kind = "suffix"
            else:
                regex += "[^/]*"
                kind = "regexp"
        elif ch == "?":
            regex += "[^/]"
            kind = "regexp"
        elif ch in ".+()|{}$":
            regex += "\\" + ch
        elif ch == "\\":
            if i + 1 < len(pattern):
                i += 1
                regex += re.escape(pattern[i])
                kind = "regexp"
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = "regexp"
        else:
            regex += ch
        i += 1
        runes += 1
    if kind == "exact":
        return lambda path: path == pattern
    if kind == "prefix":
        return lambda path: path.startswith(pattern[:-2])
    if kind == "suffix":
        suffix = pattern[2:]
        return lambda path: path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
    compiled = re.compile(regex + "$", re.DOTALL)
    return lambda path: compiled.match(path) is not None


class Matcher:
    """moby/patternmatcher.PatternMatcher.MatchesOrParentMatches."""

    def __init__(self, patterns):
        self.patterns = []
        for pattern in patterns:
            pattern = pattern.strip()
            if not pattern:
                continue
            pattern = go_clean(pattern)
            exclusion = pattern.startswith("!")
            if exclusion:
                if len(pattern) == 1:
                    raise ValueError('illegal exclusion pattern: "!"')
                pattern = pattern[1:]
            self.patterns.append((exclusion, compile_pattern(pattern)))
        self.has_exclusions = any(exclusion for exclusion, _ in self.patterns)

    def excluded(self, path):
        parents = path.split("/")[:-1]
        matched = False
        for exclusion, matches in self.patterns:
            if exclusion != matched:
                continue
            match = matches(path)
            if not match:
                match = any(matches("/".join(parents[: i + 1])) for i in range(len(parents)))
            if match:
                matched = not exclusion
        return matched


def context_files(root, matcher):
    """Relative paths of the files and symlinks Docker would send from root."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel + "/"
        kept = []
        for name in dirnames:
            path = rel + name
            if os.path.islink(os.path.join(dirpath, name)):
                filenames.append(name)
            # an excluded folder is walked only when a `!` pattern could bring back
            # something below it, as Docker's walker does
            elif not matcher.excluded(path) or matcher.has_exclusions:
                kept.append(name)
        dirnames[:] = sorted(kept)
        for name in sorted(filenames):
            path = rel + name
            if not matcher.excluded(path):
                files.append(path)
    return files


def assemble_context(root, out):
    ignore = root / ".dockerignore"
    matcher = Matcher(read_dockerignore(ignore.read_text()) if ignore.exists() else [])
    files = context_files(root, matcher)
    for rel in files:
        src, dst = root / rel, out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)  # keeps mtimes, so a rebuild is incremental
    return files


# --- Dockerfile -------------------------------------------------------------------


def dockerfile_instructions(text):
    """(line number, INSTRUCTION, arguments) with continuation lines joined."""
    lines = text.splitlines()
    for line in lines:
        if not line.startswith("#"):
            break
        if re.match(r"#\s*escape\s*=", line):
            raise Refused("the `# escape=` parser directive is not interpreted")
    out, i = [], 0
    while i < len(lines):
        line, start = lines[i], i + 1
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue  # comment lines inside a continuation are dropped
            line = line.rstrip()[:-1] + " " + nxt.strip()
        if "<<" in line:
            raise Refused(f"line {start}: heredocs are not interpreted")
        keyword, _, rest = line.strip().partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
    return out


def stages(instructions):
    """[{name, index, base, steps}] in Dockerfile order."""
    result = []
    for number, keyword, args in instructions:
        if keyword == "FROM":
            words = args.split()
            flags = [w for w in words if w.startswith("--")]
            words = [w for w in words if not w.startswith("--")]
            if flags:
                raise Refused(f"line {number}: FROM flags {flags} are not interpreted")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise Refused(f"line {number}: FROM {args!r} is not `FROM image [AS name]`")
            result.append({"name": name, "index": len(result), "base": words[0], "line": number, "steps": []})
        elif not result:
            if keyword != "ARG":
                raise Refused(f"line {number}: {keyword} before the first FROM")
        else:
            result[-1]["steps"].append((number, keyword, args))
    return result


def split_flags(args):
    """Leading `--name=value` flags of an instruction, and the rest."""
    flags, rest = [], args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def parse_kv(args, number, keyword):
    pairs = {}
    for word in shlex.split(args):
        if "=" not in word:
            if keyword == "ARG":
                pairs[word] = None
                continue
            raise Refused(f"line {number}: legacy `{keyword} name value` form is not interpreted")
        name, _, value = word.partition("=")
        pairs[name] = value
    return pairs


class Replay:
    """A scratch folder standing for `/` of a stage, and the state of its build."""

    def __init__(self, root, context, caches, stage, env):
        self.root, self.context, self.caches, self.stage = root, context, caches, stage
        self.workdir = PurePosixPath("/")
        self.env = env
        self.vars = {}

    def host(self, path, cwd=None):
        """The folder under the scratch root standing for an image path."""
        path = PurePosixPath(path)
        if not path.is_absolute():
            path = (cwd or self.workdir) / path
        return self.root / go_clean(str(path)).lstrip("/")

    def step(self, number, keyword, args):
        where = f"Dockerfile line {number}"
        if keyword == "WORKDIR":
            self.workdir = self.workdir / self.expand(args, where)
            self.host(self.workdir).mkdir(parents=True, exist_ok=True)
        elif keyword in ("ENV", "ARG"):
            for name, value in parse_kv(args, number, keyword).items():
                if value is not None:
                    self.vars[name] = value
                    if keyword == "ENV":
                        self.env[name] = value
        elif keyword == "COPY":
            self.copy(number, args)
        elif keyword == "RUN":
            self.run(number, args)
        else:
            raise Refused(f"{where}: {keyword} in a build stage is not interpreted")

    def expand(self, text, where):
        if "$" in text:
            raise Refused(f"{where}: variables in {text!r} are not interpreted")
        return text

    def copy(self, number, args):
        where = f"Dockerfile line {number}"
        flags, rest = split_flags(args)
        if flags:
            raise Refused(f"{where}: COPY flags {flags} are not interpreted in a build stage")
        if rest.startswith("["):
            raise Refused(f"{where}: COPY in JSON form is not interpreted")
        *sources, dest = shlex.split(self.expand(rest, where))
        if not sources:
            raise Refused(f"{where}: COPY needs a source and a destination")
        target = self.host(dest)
        into_dir = dest.endswith("/") or len(sources) > 1 or target.is_dir()
        for source in sources:
            if any(c in source for c in "*?["):
                raise Refused(f"{where}: COPY wildcards are not interpreted")
            rel = go_clean(source).lstrip("/")
            src = self.context / rel if rel != "." else self.context
            if not (src.exists() or src.is_symlink()):
                # Docker: failed to compute cache key: "/name": not found
                raise SystemExit(f"{where}: COPY {source}: not found in the build context "
                                 f"(absent, or excluded by .dockerignore)")
            if src.is_dir() and not src.is_symlink():
                # a folder's contents are copied, not the folder itself
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            else:
                dst = target / src.name if into_dir else target
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst, follow_symlinks=False)
        print(f"COPY {rest}", flush=True)

    def run(self, number, args):
        where = f"Dockerfile line {number}"
        flags, command = split_flags(args)
        mounts = []
        for flag in flags:
            name, _, value = flag[2:].partition("=")
            options = dict(o.partition("=")[::2] for o in value.split(","))
            if name != "mount" or options.get("type") != "cache" or set(options) - {"type", "target", "id", "sharing"}:
                raise Refused(f"{where}: RUN flag {flag} is not interpreted (only --mount=type=cache,target=...)")
            mounts.append(options["target"])
        if command.startswith("["):
            raise Refused(f"{where}: RUN in JSON form is not interpreted")
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands, current = [], []
        for token in lexer:
            if token == "&&":
                commands.append(current)
                current = []
            elif set(token) <= set("();<>|&"):
                raise Refused(f"{where}: shell operator {token!r} is not interpreted (only &&)")
            else:
                if "$" in token or "`" in token:
                    raise Refused(f"{where}: expansions in {token!r} are not interpreted")
                current.append(token)
        commands.append(current)
        shadowed = self.mount(mounts)
        try:
            for words in commands:
                self.run_one(words, where)
        finally:
            self.unmount(shadowed)

    def mount(self, targets):
        """A cache mount: the image path becomes a persistent folder for this RUN.

        Docker keeps a cache mount between builds, outside any image layer; so does
        this, which is why a second run compiles only what changed."""
        shadowed = []
        for target in targets:
            path = self.host(target)
            cache = self.caches / self.stage / go_clean(target).strip("/").replace("/", "_")
            cache.mkdir(parents=True, exist_ok=True)
            aside = None
            if path.exists() or path.is_symlink():
                aside = path.with_name(path.name + ".shadowed-by-mount")
                path.rename(aside)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(cache)
            shadowed.append((path, aside))
        return shadowed

    def unmount(self, shadowed):
        for path, aside in reversed(shadowed):
            path.unlink()
            if aside is not None:
                aside.rename(path)

    def run_one(self, words, where):
        cwd = self.host(self.workdir)
        program, *rest = words
        print(f"RUN {' '.join(words)}", flush=True)
        if program == "cargo":
            # quiet changes only what cargo prints (errors and warnings still show)
            env = dict(self.env, CARGO_TERM_QUIET="true")
            status = subprocess.run(["cargo", *rest], cwd=cwd, env=env).returncode
            if status != 0:
                raise SystemExit(f"{where}: `cargo {' '.join(rest)}` failed with status {status}")
        elif program == "mkdir":
            paths = [w for w in rest if w != "-p"]
            if any(w.startswith("-") for w in paths):
                raise Refused(f"{where}: mkdir options other than -p are not interpreted")
            for p in paths:
                self.host(p).mkdir(parents=True, exist_ok="-p" in rest)
        elif program == "cp":
            if any(w.startswith("-") for w in rest) or len(rest) < 2:
                raise Refused(f"{where}: only `cp FILE... DIR/` is interpreted")
            *files, dest = rest
            target = self.host(dest)
            for f in files:
                src = self.host(f)
                if not src.is_file():
                    raise SystemExit(f"{where}: cp: cannot stat {f!r}: the build did not produce it")
                shutil.copy2(src, target / src.name if target.is_dir() else target)
        else:
            raise Refused(f"{where}: the command {program!r} is not interpreted (only cargo, mkdir, cp)")


def rust_toolchain(base, env):
    """The rust image's Rust version must be the one cargo runs with here."""
    match = re.fullmatch(r"(?:docker\.io/(?:library/)?)?rust:(\d+\.\d+(?:\.\d+)?)(-[a-z0-9.-]+)?", base)
    if not match:
        raise Refused(f"build stage base image {base!r} is not an official `rust:<version>` image")
    version = match.group(1)
    have = subprocess.run(["rustc", "--version"], capture_output=True, text=True, env=env).stdout.split()
    if len(have) > 1 and (have[1] == version or have[1].startswith(version + ".")):
        return version, have[1]
    if shutil.which("rustup") is None:
        raise SystemExit(f"the image builds with Rust {version}, this machine has {have} and no rustup")
    print(f"installing Rust {version} (the build stage's base image {base})", flush=True)
    subprocess.run(["rustup", "toolchain", "install", version, "--profile", "minimal"], check=True)
    env["RUSTUP_TOOLCHAIN"] = version
    have = subprocess.run(["rustc", "--version"], capture_output=True, text=True, env=env, check=True).stdout.split()
    return version, have[1]


def debian_release(base):
    """bookworm of rust:1.95-slim-bookworm or debian:bookworm-slim."""
    names = ("buster", "bullseye", "bookworm", "trixie", "forky")
    found = [n for n in names if re.search(rf"\b{n}\b", base)]
    return found[0] if found else None


def build_env():
    """This process's environment without what would make cargo build differently
    from the image (the rust image sets none of these): the sqlx macros must find
    what the Dockerfile gives them (its ENV, the .sqlx it copies), not a database."""
    env = {}
    for name, value in os.environ.items():
        if name in ("CARGO_HOME", "RUSTUP_HOME"):
            env[name] = value
        elif name.startswith(("CARGO_", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN")) or name in (
            "RUSTFLAGS", "RUST_LOG", "DATABASE_URL", "SQLX_OFFLINE", "SQLX_OFFLINE_DIR"
        ):
            continue
        else:
            env[name] = value
    return env


def compose_binaries(compose_file, dockerfile):
    """{service: binary} of the services docker-compose.yml builds from this Dockerfile."""
    import yaml

    compose = yaml.safe_load(compose_file.read_text())
    binaries = {}
    for service, spec in compose["services"].items():
        build = spec.get("build")
        if build is None:
            continue
        context = build if isinstance(build, str) else build.get("context", ".")
        file = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if (compose_file.parent / context / file).resolve() != dockerfile.resolve():
            continue
        command = spec.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if not command:
            raise SystemExit(f"compose service {service} builds the image but names no command")
        binaries[service] = command[0]
    return binaries


def replay(args):
    root = Path(args.root).resolve()
    dockerfile = root / "Dockerfile"
    scratch = Path(args.scratch)
    caches = Path(args.caches)
    if scratch.exists():
        shutil.rmtree(scratch)
    context = scratch / "context"
    context.mkdir(parents=True)
    files = assemble_context(root, context)
    print(f"build context: {len(files)} files that .dockerignore lets through "
          f"({', '.join(sorted({f.split('/')[0] for f in files}))})", flush=True)
    untracked = git_untracked(root, files)
    if untracked:
        print(f"note: {len(untracked)} of them are not tracked by git (a clean clone lacks them): "
              f"{untracked[:10]}", flush=True)

    all_stages = stages(dockerfile_instructions(dockerfile.read_text()))
    runtime = all_stages[-1]
    by_name = {s["name"]: s for s in all_stages if s["name"]}
    copies_from = []  # (stage, src, dst) of the runtime stage
    for number, keyword, rest in runtime["steps"]:
        if keyword != "COPY":
            print(f"not replayed (runtime stage, line {number}): {keyword} {rest}")
            continue
        flags, rest = split_flags(rest)
        source = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
        if not source or len(flags) != 1:
            raise Refused(f"Dockerfile line {number}: runtime COPY {flags} {rest!r} is not `COPY --from=<stage> src dst`")
        name = source[0]
        stage = by_name.get(name) or (all_stages[int(name)] if name.isdigit() else None)
        if stage is None:
            raise Refused(f"Dockerfile line {number}: --from={name} is not a stage of this Dockerfile")
        *srcs, dst = shlex.split(rest)
        copies_from.append((stage, srcs, dst))

    env = build_env()
    built = {}
    for stage in {id(s): s for s, _, _ in copies_from}.values():
        label = stage["name"] or str(stage["index"])
        release = (debian_release(stage["base"]), debian_release(runtime["base"]))
        if None in release or release[0] != release[1]:
            raise SystemExit(f"stage {label} builds on {stage['base']} and the runtime image is {runtime['base']}: "
                             f"binaries built on another Debian release may need a newer glibc than the runtime has")
        version, have = rust_toolchain(stage["base"], env)
        print(f"stage {label}: FROM {stage['base']} (Rust {version}: replayed with rustc {have}, Debian {release[0]} "
              f"like the runtime image)", flush=True)
        stage_root = scratch / f"stage-{label}"
        stage_root.mkdir()
        state = Replay(stage_root, context, caches, label, dict(env))
        for number, keyword, rest in stage["steps"]:
            state.step(number, keyword, rest)
        built[id(stage)] = state

    image = scratch / "image"
    for stage, srcs, dst in copies_from:
        state = built[id(stage)]
        target = image / go_clean(dst).lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for src in srcs:
            path = state.host(src)
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            elif path.is_file():
                shutil.copy2(path, target / path.name if dst.endswith("/") else target)
            else:
                raise SystemExit(f"runtime COPY --from={stage['name']} {src}: not produced by the stage")
    path_dirs = ["usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin"]  # debian's PATH

    installed = apt_packages(runtime)
    binaries = compose_binaries(Path(args.compose), dockerfile)
    if not binaries:
        raise SystemExit("no docker-compose.yml service builds this Dockerfile")
    problems = []
    for service, binary in sorted(binaries.items()):
        found = next((image / d / binary for d in path_dirs if (image / d / binary).is_file()), None)
        if found is None:
            problems.append(f"{service}: the image has no {binary} on its PATH")
            continue
        if not os.access(found, os.X_OK):
            problems.append(f"{service}: /{found.relative_to(image)} is not executable")
            continue
        help_run = subprocess.run([str(found), "--help"], capture_output=True, text=True)
        if help_run.returncode != 0:
            problems.append(f"{service}: `{binary} --help` failed: {help_run.stderr.strip()}")
            continue
        print(f"{service}: /{found.relative_to(image)} is in the image and answers --help")
    for service, program in sorted(healthcheck_programs(Path(args.compose), binaries).items()):
        on_path = any((image / d / program).is_file() for d in path_dirs)
        if program not in installed and not on_path:
            problems.append(f"{service}: its healthcheck runs {program}, which the runtime stage neither installs "
                            f"(apt-get install {' '.join(sorted(installed))}) nor copies")
        else:
            print(f"{service}: its healthcheck's {program} is installed by the runtime stage")
    for problem in problems:
        print("docker-build:", problem, file=sys.stderr)
    if problems:
        sys.exit(1)


def apt_packages(stage):
    """Packages the stage's RUN lines `apt-get install`."""
    packages = set()
    for _, keyword, args in stage["steps"]:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = command.split()
            if words[:2] == ["apt-get", "install"]:
                packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def healthcheck_programs(compose_file, binaries):
    """{service: program} run by the healthchecks of the services built from the Dockerfile."""
    import yaml

    compose = yaml.safe_load(compose_file.read_text())
    programs = {}
    for service in binaries:
        test = (compose["services"][service].get("healthcheck") or {}).get("test")
        if not test:
            continue
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if test[0] == "CMD":
            programs[service] = test[1]
        elif test[0] == "CMD-SHELL":
            programs[service] = shlex.split(test[1])[0]
    return programs


def git_untracked(root, files):
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        return []
    tracked = set(listed.stdout.split("\0"))
    return [f for f in files if f not in tracked]


# --- self test --------------------------------------------------------------------


def selftest(_args):
    """The .dockerignore examples of Docker's documentation, and moby's own tests."""
    cases = [
        # (patterns, path, excluded)
        (["*/temp*"], "somedir/temporary.txt", True),
        (["*/temp*"], "somedir/temp", True),
        (["*/temp*"], "temp", False),
        (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
        (["*/*/temp*"], "somedir/temporary.txt", False),
        (["temp?"], "tempa", True),
        (["temp?"], "tempab", False),
        (["temp?"], "dir/tempa", False),
        (["**/*.go"], "a.go", True),
        (["**/*.go"], "x/y/z.go", True),
        (["**/*.go"], "x/y/z.goo", False),
        (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "CHANGES.md", True),
        (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
        (["target/"], "target/release/x", True),
        (["target/"], "api/target/x", False),
        (["/target"], "target/x", True),
        (["./target"], "target", True),
        (["target"], "targets", False),
        (["dir/**"], "dir/a/b", True),
        (["dir/**"], "dir", False),
        (["**"], "anything/at/all", True),
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["a/**/b"], "a/x/y/c", False),
        (["docs", "!docs/keep.md"], "docs/keep.md", False),
        (["docs", "!docs/keep.md"], "docs/other.md", True),
        (["a.b"], "axb", False),
        (["[a-c]x"], "bx", True),
        (["[!a-c]x"], "dx", False),  # `!` is not negation in a Go class; `^` is
        (["[^a-c]x"], "dx", True),
        (["**foo"], "barfoo", True),  # moby compares `**x` as a plain suffix
        (["a?\\*"], "ab*", True),
        (["a?\\*"], "abc", False),
        (["file\\*"], "file*", True),
        (["file\\*"], "filex", False),
        (["# a comment"], "# a comment", False),
        (["!"], "x", "error"),
    ]
    failures = 0
    for patterns, path, want in cases:
        try:
            got = Matcher(read_dockerignore("\n".join(patterns))).excluded(path)
        except ValueError:
            got = "error"
        if got != want:
            failures += 1
            print(f"FAIL {patterns} {path!r}: excluded={got}, expected {want}")
    # comment lines are dropped before anything else, even with leading blanks kept
    read = read_dockerignore("# c\n  \n/a/../b/\n! c\n")
    if read != ["b", "!c"]:
        failures += 1
        print(f"FAIL read_dockerignore: {read}")
    print(f"dockerignore matcher: {len(cases) + 1 - failures} of {len(cases) + 1} cases as Docker decides them")
    sys.exit(1 if failures else 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay", help="assemble the context and replay the build")
    r.add_argument("--root", default=str(ROOT), help="the folder docker build would be run in")
    r.add_argument("--compose", default=str(ROOT / "docker-compose.yml"))
    r.add_argument("--scratch", required=True, help="wiped and rebuilt: context, stage roots, image")
    r.add_argument("--caches", required=True, help="persistent folders of the RUN cache mounts")
    r.set_defaults(func=replay)
    c = sub.add_parser("context", help="list the files of the build context")
    c.add_argument("--root", default=str(ROOT))
    c.set_defaults(func=lambda a: print("\n".join(context_files(Path(a.root), Matcher(read_dockerignore(
        (Path(a.root) / ".dockerignore").read_text() if (Path(a.root) / ".dockerignore").exists() else ""))))))
    s = sub.add_parser("selftest")
    s.set_defaults(func=selftest)
    args = parser.parse_args()
    try:
        args.func(args)
    except Refused as refused:
        sys.exit(f"docker-build: refusing to guess: {refused}")


if __name__ == "__main__":
    main()
