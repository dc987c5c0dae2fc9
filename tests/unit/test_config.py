import pytest

from cri import config as configuration
from cri.config import ConfigError, load
from image.limits import ImageLimits


def test_defaults_without_a_file():
    cfg = load(None)
    assert cfg.socket == "/run/cricket/cricket.sock"
    assert cfg.root_dir == "/var/lib/cricket"
    assert cfg.state_dir == "/run/cricket"
    assert cfg.image.max_concurrent_downloads == 3
    assert cfg.registries == {}


def test_missing_default_file_is_fine(monkeypatch, tmp_path):
    monkeypatch.setattr(configuration, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    assert load(str(tmp_path / "absent.toml")).log_level == "info"


def test_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "nope.toml"))


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'root_dir = "/srv/cricket"\nsocket = "/tmp/a.sock"\n'
        "[image]\nmax_concurrent_downloads = 8\n"
        '[registries."docker.io"]\nmirrors = ["http://127.0.0.1:5000"]\n'
        '[registries."127.0.0.1:5000"]\ninsecure = true\n'
    )
    cfg = load(str(path), {"socket": "/tmp/b.sock", "state_dir": None})
    assert cfg.root_dir == "/srv/cricket"
    assert cfg.socket == "/tmp/b.sock"  # the flag wins
    assert cfg.state_dir == "/run/cricket"  # an unset flag leaves the default
    assert cfg.image.max_concurrent_downloads == 8
    assert cfg.registries["docker.io"].mirrors == ["http://127.0.0.1:5000"]
    assert cfg.registries["127.0.0.1:5000"].insecure is True
    assert cfg.as_dict()["registries"]["docker.io"]["mirrors"] == ["http://127.0.0.1:5000"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("sockett = '/x'", "unknown key 'sockett'"),
        ("[image]\nmax_concurrent_downloads = 0", "image.max_concurrent_downloads: must be positive"),
        ("[image]\nmax_concurrent_downloads = 'many'", "want a number"),
        ("[registries.'docker.io']\ninsecure = 'yes'", "registries.docker.io.insecure: want true or false"),
        ("[registries.'docker.io']\nmirrors = 'http://x'", "want a list of strings"),
        ("log_level = 'loud'", "log_level: want one of"),
        ("root_dir = 'relative/dir'", "root_dir: want an absolute path"),
        ("root_dir = ", "config file"),
        ("[image]\nmax_layer_size = 0", "image.max_layer_size: must be positive"),
        ("[image]\nmax_layer_entries = -5", "image.max_layer_entries: must be positive"),
        ("[image]\nmax_layer_entries = 0.5", "image.max_layer_entries: want a whole number"),
        ("[image]\nmax_concurrent_downloads = 2.5", "image.max_concurrent_downloads: want a whole number"),
        ("[image]\nmax_layer_size = '64G'", "image.max_layer_size: want a number"),
        ("[rootfs]\nvolatile = 'yes'", "rootfs.volatile: want true or false"),
        ("rootfs = true", "rootfs: want a table"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, words):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert words in str(e.value)


def test_runtimes_table_configures_handlers(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'state_dir = "/run/x"\n[runtimes.fast]\npath = "/opt/fast"\n[runtimes.other]\npath = "/opt/o"\nroot = "/r"\n'
    )
    handlers = configuration.runtime_handlers(load(str(f)))
    assert {n: (h.path, h.root) for n, h in handlers.items()} == {
        "fast": ("/opt/fast", "/run/x/runtimes/fast"),
        "other": ("/opt/o", "/r"),
    }


def test_an_empty_runtimes_table_offers_only_the_builtin(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[runtimes]\n")
    assert configuration.runtime_handlers(load(str(f))) == {}


@pytest.mark.parametrize(
    "text,words",
    [
        ('[runtimes.x]\nroot = "/r"\n', "runtimes.x.path"),
        ('[runtimes.cricket]\npath = "/bin/true"\n', "built-in"),
        ('[runtimes.x]\npath = "/bin/true"\nflavour = "mint"\n', "flavour"),
    ],
)
def test_bad_runtimes_are_refused(tmp_path, text, words):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load(str(f))


def test_layer_bounds_default_to_the_unpackers_and_can_be_set(tmp_path):
    # The daemon's defaults are the bounds image/ applies when nothing is configured (an
    # archive load's puller), and the README's reference says the same.
    cfg = load(None)
    assert (cfg.image.max_layer_size, cfg.image.max_layer_entries) == (64 << 30, 1_000_000)
    assert ImageLimits() == ImageLimits(cfg.image.max_layer_size, cfg.image.max_layer_entries)
    path = tmp_path / "c.toml"
    path.write_text("[image]\nmax_layer_size = 1e9\nmax_layer_entries = 500\n")
    cfg = load(str(path))
    assert cfg.image.max_layer_size == 1_000_000_000 and type(cfg.image.max_layer_size) is int
    assert cfg.image.max_layer_entries == 500


def test_rootfs_volatile_is_on_unless_turned_off(tmp_path):
    assert load(None).rootfs.volatile is True
    path = tmp_path / "c.toml"
    path.write_text("[rootfs]\nvolatile = false\n")
    assert load(str(path)).rootfs.volatile is False
