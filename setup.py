"""Package list for the repository layout (README.md, section 'Layout'): `plugins/` and `kernels/` install as
sub-packages of `hf_seqplugins`, found automatically so that a new architecture folder needs no edit here."""

from setuptools import find_packages, setup


def packages_under(prefix: str, folder: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_packages(folder)]


setup(
    packages=find_packages(include=["hf_seqplugins", "hf_seqplugins.*"])
    + packages_under("hf_seqplugins.plugins", "plugins")
    + packages_under("hf_seqplugins.kernels", "kernels")
    + ["hf_seqplugins.model_cards"]
)
