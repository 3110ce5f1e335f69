"""Hydra helpers shared by the tests (imported as ``_hydra``: pytest puts tests/ on sys.path)."""

from sns.cli import CONFIG_PATH


def compose(config: str, overrides: list[str]):
    """The composed config ``config`` of conf/ with ``overrides``, as the entry point would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)
