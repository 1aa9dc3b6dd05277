"""Drives oras-py (PyPI `oras`) against a registry: run by registry/tests/clients.rs.

usage: roundtrip.py <host:port> <user> <password> <workdir>

Pushes an artifact with one file layer and a manifest annotation, pulls it back and compares
the bytes; pushes a second artifact whose `subject` is the first, then reads the first's
referrers (the `/referrers/` API, which oras-py has no call for, through the client's own
authenticated session). Prints one JSON object of what it saw; any mismatch raises.
"""

import json
import os
import sys

import oras.oci
import oras.provider

host, user, password, workdir = sys.argv[1:5]
os.chdir(workdir)  # oras-py only pushes files under the working directory

client = oras.provider.Registry(hostname=host, insecure=True, auth_backend="basic")
client.auth.set_basic_auth(user, password)

payload = os.urandom(4096) + b"enclii oras test\n"
with open("artifact.bin", "wb") as f:
    f.write(payload)

target = f"{host}/oras/artifact:v1"
client.push(
    target=target,
    files=["artifact.bin:application/vnd.enclii.test.layer"],
    manifest_annotations={"org.opencontainers.image.description": "enclii oras test"},
    quiet=True,
)

pulled = client.pull(target=target, outdir=os.path.join(workdir, "pulled"))
assert len(pulled) == 1, pulled
with open(pulled[0], "rb") as f:
    assert f.read() == payload, "pulled bytes differ from pushed bytes"

manifest = client.get_manifest(target)
assert manifest["annotations"]["org.opencontainers.image.description"] == "enclii oras test", manifest

# The subject: the first artifact's manifest as the registry stores it (digest and size from
# the registry's own headers, not re-serialised JSON).
head = client.do_request(f"http://{host}/v2/oras/artifact/manifests/v1", "HEAD",
                         headers={"Accept": oras.defaults.default_manifest_media_type})
subject = oras.oci.Subject(
    mediaType=head.headers["Content-Type"],
    digest=head.headers["Docker-Content-Digest"],
    size=int(head.headers["Content-Length"]),
)

with open("sbom.json", "w") as f:
    json.dump({"bomFormat": "CycloneDX", "specVersion": "1.5"}, f)
referrer = client.push(
    target=f"{host}/oras/artifact:sbom",
    files=["sbom.json:application/vnd.cyclonedx+json"],
    manifest_config="no-config:application/vnd.enclii.test.sbom",
    manifest_annotations={"org.example.kind": "sbom"},
    subject=subject,
    quiet=True,
)
assert referrer.headers.get("OCI-Subject") == subject.digest, dict(referrer.headers)
referrer_digest = referrer.headers["Docker-Content-Digest"]

listed = client.do_request(f"http://{host}/v2/oras/artifact/referrers/{subject.digest}", "GET")
assert listed.status_code == 200, listed.text
index = listed.json()
found = [m for m in index["manifests"] if m["digest"] == referrer_digest]
assert len(found) == 1, index
assert found[0]["artifactType"] == "application/vnd.enclii.test.sbom", found
assert found[0]["annotations"]["org.example.kind"] == "sbom", found

print(json.dumps({
    "subject": subject.digest,
    "referrer": referrer_digest,
    "pulled_bytes": len(payload),
    "referrers": len(index["manifests"]),
}))
