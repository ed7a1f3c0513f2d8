import pytest

from tandem.cloud.config import CloudConfig
from tandem.edge.config import EdgeConfig
from tandem.router.config import RouterConfig
from tandem.shared.cli.main import build_parser
from tandem.shared.config import config_from_args, load_config


def test_precedence_defaults_file_env_flags(tmp_path):
    file = tmp_path / "tandem.toml"
    file.write_text('[router]\ndraft_tokens = 3\nstate = "redis://127.0.0.1:1/0"\nport = 7000\n')
    env = {"TANDEM_ROUTER_DRAFT_TOKENS": "5", "TANDEM_ROUTER_CASCADE_THRESHOLD": "0.25"}
    cfg = load_config(RouterConfig, "router", file=file, env=env, overrides={"port": 7100})
    assert cfg.draft_tokens == 5  # env beats file
    assert cfg.state == "redis://127.0.0.1:1/0"  # file beats default
    assert cfg.cascade_threshold == 0.25
    assert cfg.port == 7100  # flags beat everything


def test_unknown_file_keys_and_bad_values_are_errors(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text("[cloud]\nmodle = 'x'\n")
    with pytest.raises(ValueError, match="unknown"):
        load_config(CloudConfig, "cloud", file=file, env={})
    with pytest.raises(ValueError, match="dtype"):
        load_config(CloudConfig, "cloud", env={"TANDEM_CLOUD_DTYPE": "float8"})
    with pytest.raises(ValueError, match="backend"):
        EdgeConfig(backend="onnx")
    with pytest.raises(ValueError, match="flash_attn"):
        EdgeConfig(backend="torch", flash_attn=True)


def test_cli_flags_are_generated_from_fields():
    args = build_parser().parse_args(
        ["serve", "router", "--draft-tokens", "4", "--cascade-threshold", "0.1"])
    cfg = config_from_args(RouterConfig, "router", args)
    assert (cfg.draft_tokens, cfg.cascade_threshold) == (4, 0.1)


def test_client_options_reach_the_in_process_edge():
    from tandem.edge.sdk.engines import ClientConfig, edge_config_for

    edge = edge_config_for(ClientConfig(flash_attn=True, threads=1, context_window=8192))
    assert (edge.flash_attn, edge.threads, edge.backend, edge.context_window) == \
        (True, 1, "llama.cpp", 8192)
    assert edge_config_for(ClientConfig(backend="torch", artifacts="/a")).artifacts == "/a"
    with pytest.raises(ValueError, match="flash_attn"):
        edge_config_for(ClientConfig(backend="torch", flash_attn=True))
