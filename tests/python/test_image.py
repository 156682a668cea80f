"""The container image (Containerfile, built by scripts/image with buildah) runs.

No registry is reachable and no container runtime may run here, so the test builds the image
FROM scratch from the binary this suite tests (COLLECTOR_BIN: the debug build under
scripts/test, chosen so the test costs one image build of a binary that already exists, ~3 s),
takes the image's root filesystem with `buildah from` + `buildah mount`, and starts the image's
own ENTRYPOINT + CMD inside it with chroot, as the image's USER, with its ENV and WORKDIR: what
a container runtime would do, minus namespaces. Then /readyz must answer, and SIGTERM must end
it with exit 0. buildah keeps its storage in the test's temporary directory (vfs driver), so
concurrent runs share nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import REPO, binary, free_port, http_call, wait_until

TAG = "localhost/meshaudit:test"


class Buildah:
    def __init__(self, tmp: Path):
        self.global_opts = ["--root", str(tmp / "root"), "--runroot", str(tmp / "runroot")]

    def __call__(self, *args: str) -> str:
        exe = shutil.which("buildah")
        assert exe, "buildah is not installed: scripts/test installs it (apt-get install buildah)"
        r = subprocess.run([exe, *self.global_opts, "--storage-driver", "vfs", *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"buildah {' '.join(args)}:\n{r.stdout}{r.stderr}"
        return r.stdout.strip()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    # scripts/test runs as root (it installs packages); chroot and the image's file ownership
    # need it.
    assert os.geteuid() == 0, "test_image.py needs root (chroot into the image): run scripts/test as root"
    tmp = tmp_path_factory.mktemp("image")
    buildah = Buildah(tmp)
    env = dict(os.environ, BUILDAH_GLOBAL_OPTS=" ".join(buildah.global_opts))
    started = time.monotonic()
    r = subprocess.run([str(REPO / "scripts" / "image"), str(binary()), TAG],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"scripts/image failed:\n{r.stdout}{r.stderr}"
    build_s = time.monotonic() - started
    container = buildah("from", "--pull-never", TAG)
    root = Path(buildah("mount", container))
    config = json.loads(buildah("inspect", "--type", "image", TAG))["OCIv1"]["config"]
    yield {"root": root, "config": config, "build_s": build_s, "tmp": tmp}
    buildah("umount", container)
    buildah("rm", container)
    buildah("rmi", "-f", TAG)
    subprocess.run(["rm", "-rf", str(tmp / "root"), str(tmp / "runroot")], check=False)


def test_image_holds_the_binary_its_libraries_and_ca_certificates_only(image):
    root: Path = image["root"]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    libs = [f for f in files if f.startswith(("lib/", "lib64/", "usr/lib"))]
    others = [f for f in files if f not in libs]
    assert others == ["etc/group", "etc/passwd", "etc/ssl/certs/ca-certificates.crt",
                      "usr/local/bin/meshaudit"], files
    # Exactly what the binary loads (ldd), nothing more: no shell, no tools.
    loaded = subprocess.run(["ldd", str(binary())], capture_output=True, text=True).stdout
    wanted = {Path(w).name for w in loaded.split() if w.startswith("/")}
    assert {Path(f).name for f in libs} == wanted, (libs, loaded)
    assert not (root / "bin" / "sh").exists()


def test_image_runs_as_a_non_root_user(image):
    config = image["config"]
    user = config.get("User", "")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, user
    data = image["root"] / "var" / "lib" / "meshaudit"
    assert (data.stat().st_uid, data.stat().st_gid) == (int(uid), int(gid))
    # deploy/ runs `meshaudit` by name: it must be on the image's PATH.
    path = dict(e.split("=", 1) for e in config["Env"])["PATH"]
    assert any((image["root"] / p.lstrip("/") / "meshaudit").exists() for p in path.split(":"))


def _admin_get(port: int, path: str) -> int:
    return http_call(f"http://127.0.0.1:{port}{path}")[0]


def test_the_entrypoint_serves_inside_the_image_and_stops_cleanly_on_sigterm(image):
    root: Path = image["root"]
    config = image["config"]
    uid, gid = (int(x) for x in config["User"].split(":"))
    argv = config["Entrypoint"] + config.get("Cmd", [])
    admin, als = free_port(), free_port()
    # The image's ENV, plus the addresses (free ports: other tests run at the same time);
    # everything else is the image's default.
    env = dict(e.split("=", 1) for e in config["Env"])
    env.update(MESHAUDIT_ALS_ADDR=f"127.0.0.1:{als}", MESHAUDIT_ADMIN_ADDR=f"127.0.0.1:{admin}",
               RUST_LOG="info")
    workdir = config.get("WorkingDir") or "/"

    def enter_image():
        os.chroot(root)
        os.chdir(workdir)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    log = image["tmp"] / "entrypoint.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, preexec_fn=enter_image, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or _admin_get(admin, "/readyz") == 200,
                   30, "/readyz inside the image")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _admin_get(admin, "/metrics") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # It wrote its data (the signing key, the spool) where the image's WORKDIR put it, as its user.
    written = [p for p in (root / workdir.lstrip("/")).rglob("*") if p.is_file()]
    assert written and all(p.stat().st_uid == uid for p in written), written
