"""A CycloneDX 1.6 JSON inventory (SBOM) of a guest's installed packages.

Every package gets a package URL: ``pkg:deb/debian/NAME@VERSION?arch=amd64&distro=debian-12``,
``pkg:rpm/rocky/NAME@VERSION-RELEASE?arch=x86_64&epoch=1&distro=rocky-9.3``,
``pkg:apk/alpine/NAME@VERSION?arch=x86_64&distro=alpine-3.19.1``; its source package is kept as
the properties ``guestkit:source_name`` and ``guestkit:source_version``.  The guest's OS is the
BOM's metadata component, which depends on every package.

Written with cyclonedx-python-lib (the ``scan`` extra), imported only when an SBOM is made; an
ImportError names ``pip install '.[scan]' in a checkout``.
"""

from __future__ import annotations

from .model import APK, DPKG, RPM, GuestOS, InstalledPackage

PURL_TYPES = {DPKG: "deb", RPM: "rpm", APK: "apk"}
EXTRA_HINT = "pip install '.[scan]' in a checkout"


def _library():
    try:
        from cyclonedx.model import Property
        from cyclonedx.model.bom import Bom
        from cyclonedx.model.component import Component, ComponentType
        from cyclonedx.output.json import JsonV1Dot6
        from packageurl import PackageURL
    except ImportError as exc:
        raise ImportError(f"writing an SBOM needs cyclonedx-python-lib ({exc}): {EXTRA_HINT}") from None
    return Property, Bom, Component, ComponentType, JsonV1Dot6, PackageURL


def purl_parts(guest: GuestOS, package: InstalledPackage) -> dict:
    """The package URL's type, namespace, name, version and qualifiers for package."""
    namespace = guest.id or {DPKG: "debian", APK: "alpine"}.get(package.kind, "unknown")
    version, qualifiers = package.version, {}
    if package.arch:
        qualifiers["arch"] = package.arch
    if package.kind == RPM and ":" in version:
        epoch, version = version.split(":", 1)
        qualifiers["epoch"] = epoch
    if guest.id and guest.version_id:
        qualifiers["distro"] = f"{guest.id}-{guest.version_id}"
    return {"type": PURL_TYPES.get(package.kind, "generic"), "namespace": namespace,
            "name": package.name, "version": version, "qualifiers": qualifiers}


def cyclonedx_json(guest: GuestOS, packages: list[InstalledPackage]) -> str:
    """The CycloneDX 1.6 JSON document of the guest's installed packages."""
    Property, Bom, Component, ComponentType, JsonV1Dot6, PackageURL = _library()
    bom = Bom()
    root = Component(name=guest.id or "unknown", version=guest.version_id or None,
                     type=ComponentType.OPERATING_SYSTEM, description=guest.pretty_name or None,
                     bom_ref=f"os:{guest.id or 'unknown'}")
    bom.metadata.component = root
    seen, components = set(), []
    for package in packages:
        purl = PackageURL(**purl_parts(guest, package))
        ref = purl.to_string()
        if ref in seen:
            continue
        seen.add(ref)
        props = [Property(name="guestkit:source_name", value=package.source_name),
                 Property(name="guestkit:source_version", value=package.source_version)]
        components.append(Component(name=package.name, version=package.version, purl=purl,
                                    type=ComponentType.LIBRARY, bom_ref=ref, properties=props))
    for component in components:
        bom.components.add(component)
    bom.register_dependency(root, components)
    return JsonV1Dot6(bom).output_as_string(indent=2)
