#!/usr/bin/env python3
"""Helpers of scripts/setup.sh for native TensorFlow under @tensorflow/tfjs-node(-gpu).

  setup-tf.py verify WHEEL SHA256
      Checks the wheel's sha256 against the pinned PyPI value.

  setup-tf.py extract WHEEL SHA256 DEPS_DIR SOURCE
      Builds the package's deps/ directory from a TensorFlow wheel (DESIGN.md section 2):
        lib/libtensorflow_cc.so.2, lib/libtensorflow_framework.so.2      (from tensorflow/)
        lib/libtensorflow.so.2.9.1, lib/libtensorflow.so -> libtensorflow_cc.so.2
        lib/libtensorflow_framework.so -> libtensorflow_framework.so.2
        include/                                                       (tensorflow/include/)
        pipe-libtensorflow.json                                        (what src/exec/runtime.ts reads)
      Every extracted file is checked against the sha256 in the wheel's RECORD. The new tree is
      built beside DEPS_DIR and swapped in with renames, so a half-written deps/ is never seen.

  setup-tf.py link-cuda DEPS_DIR CUDA_SITE_DIR
      Makes the CUDA 12 libraries of the nvidia-*-cu12 wheels (installed under CUDA_SITE_DIR/nvidia)
      findable by libtensorflow: deps/nvidia -> CUDA_SITE_DIR/nvidia (libtensorflow_cc.so.2's
      RUNPATH has $ORIGIN/../nvidia/<lib>/lib) and a symlink in deps/lib for each CUDA library
      (libtensorflow_framework.so.2, which dlopens them, only searches $ORIGIN). Idempotent.

Only the standard library: it runs with any python3 >= 3.8, before any venv exists.
"""

import base64
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile

# tfjs-node 4.22.0 expects libtensorflow 2.9.1 and looks for lib/libtensorflow.so.2.9.1.
TFJS_EXPECTED_LIB = "libtensorflow.so.2.9.1"
STAMP = "pipe-libtensorflow.json"


def fail(message):
    print(f"setup-tf: {message}", file=sys.stderr)
    sys.exit(1)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(wheel, expected):
    actual = sha256_file(wheel)
    if actual != expected:
        fail(
            f"{wheel}: sha256 {actual} does not match the pinned PyPI sha256 {expected}; "
            "delete the file and run the setup again"
        )


def record_hashes(wheel_zip):
    """path -> urlsafe-base64 sha256 digest, from the wheel's *.dist-info/RECORD."""
    records = [n for n in wheel_zip.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        fail("the wheel has no single .dist-info/RECORD")
    hashes = {}
    for line in wheel_zip.read(records[0]).decode("utf-8").splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1].startswith("sha256="):
            hashes[parts[0]] = parts[1][len("sha256="):]
    return hashes


def extract_checked(wheel_zip, member, dest, hashes):
    expected = hashes.get(member)
    if expected is None:
        fail(f"{member} is not listed in the wheel's RECORD")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    digest = hashlib.sha256()
    with wheel_zip.open(member) as src, open(dest, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")
    if actual != expected:
        fail(f"{member}: content does not match the wheel's RECORD (corrupt wheel?)")


def metadata_version(wheel_zip):
    for name in wheel_zip.namelist():
        if name.endswith(".dist-info/METADATA"):
            for line in wheel_zip.read(name).decode("utf-8").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    fail("the wheel has no Version in its METADATA")


def extract(wheel, expected_sha256, deps_dir, source):
    verify(wheel, expected_sha256)
    deps_dir = os.path.abspath(deps_dir)
    tmp = f"{deps_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        hashes = record_hashes(z)
        libs = ["libtensorflow_cc.so.2", "libtensorflow_framework.so.2"]
        for lib in libs:
            extract_checked(z, f"tensorflow/{lib}", os.path.join(tmp, "lib", lib), hashes)
        prefix = "tensorflow/include/"
        headers = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not any(n.endswith("tensorflow/c/c_api.h") for n in headers):
            fail("the wheel has no tensorflow/include/tensorflow/c/c_api.h")
        for member in headers:
            extract_checked(z, member, os.path.join(tmp, "include", member[len(prefix):]), hashes)
        version = metadata_version(z)
    lib_dir = os.path.join(tmp, "lib")
    os.symlink("libtensorflow_cc.so.2", os.path.join(lib_dir, TFJS_EXPECTED_LIB))
    os.symlink("libtensorflow_cc.so.2", os.path.join(lib_dir, "libtensorflow.so"))
    os.symlink("libtensorflow_framework.so.2", os.path.join(lib_dir, "libtensorflow_framework.so"))
    stamp = {
        "tensorflowVersion": version,
        "source": source,
        "wheel": os.path.basename(wheel),
        "sha256": expected_sha256,
        "headers": len(headers),
        "extractedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(os.path.join(tmp, STAMP), "w") as f:
        json.dump(stamp, f, indent=2)
        f.write("\n")
    old = f"{deps_dir}.old-{os.getpid()}"
    if os.path.lexists(deps_dir):
        os.rename(deps_dir, old)
    os.rename(tmp, deps_dir)
    shutil.rmtree(old, ignore_errors=True)
    print(f"libtensorflow {version} from {os.path.basename(wheel)}: 2 libraries, {len(headers)} headers")


def link_cuda(deps_dir, cuda_site):
    nvidia = os.path.join(os.path.abspath(cuda_site), "nvidia")
    if not os.path.isdir(nvidia):
        fail(f"{nvidia} does not exist: install the nvidia-*-cu12 wheels first")
    changed = 0

    def ensure_link(target, link):
        nonlocal changed
        if os.path.islink(link) and os.readlink(link) == target:
            return
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
        changed += 1

    ensure_link(nvidia, os.path.join(deps_dir, "nvidia"))
    lib_dir = os.path.join(deps_dir, "lib")
    count = 0
    for package in sorted(os.listdir(nvidia)):
        package_lib = os.path.join(nvidia, package, "lib")
        if not os.path.isdir(package_lib):
            continue
        for name in sorted(os.listdir(package_lib)):
            if ".so" in name and not name.startswith("libtensorflow"):
                ensure_link(os.path.join(package_lib, name), os.path.join(lib_dir, name))
                count += 1
    print(f"{count} CUDA libraries linked into {lib_dir} ({changed} links changed)")


def main(argv):
    if len(argv) == 3 and argv[0] == "verify":
        verify(argv[1], argv[2])
    elif len(argv) == 5 and argv[0] == "extract":
        extract(*argv[1:])
    elif len(argv) == 3 and argv[0] == "link-cuda":
        link_cuda(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
