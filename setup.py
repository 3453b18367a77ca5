"""Packaging beyond pyproject.toml: the configs/ folder ships inside the package as dinat_m2f/model_zoo/configs,
where dinat_m2f.model_zoo finds it in an installed (non-editable) package, as detectron2 ships its model zoo's
configs. Everything else is in pyproject.toml."""
import os

from setuptools import find_packages, setup

CONFIGS_PACKAGE = "dinat_m2f.model_zoo.configs"
packages = find_packages(include=["dinat_m2f", "dinat_m2f.*"])
# Without configs/ (the Docker build installs the package before copying the rest) the package has no zoo
# configs; an editable install reads them from the source checkout anyway.
with_configs = os.path.isdir("configs")

setup(
    packages=packages + ([CONFIGS_PACKAGE] if with_configs else []),
    package_dir={CONFIGS_PACKAGE: "configs"} if with_configs else {},
    package_data={CONFIGS_PACKAGE: ["**/*.yaml"]} if with_configs else {},
)
