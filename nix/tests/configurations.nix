# The configurations nix/tests/module-eval.nix evaluates nix/module.nix in (tests/test_nix.py
# asserts on each). `good` must evaluate (some on purpose with failed assertions); each of `bad`
# must fail evaluation with a type error naming the option.
{
  good = {
    defaults = {
      services.supabase-manager.enable = true;
    };

    disabled = {
      services.supabase-manager.enable = false;
    };

    no-caddy = {
      services.supabase-manager = {
        enable = true;
        caddy.enable = false;
      };
    };

    no-caddy-group = {
      services.supabase-manager = {
        enable = true;
        caddy.enable = false;
        caddy.group = "www-data";
      };
    };

    unix-admin = {
      services.supabase-manager = {
        enable = true;
        caddy.adminAddress = "unix//run/caddy/admin.sock";
      };
    };

    unix-admin-elsewhere = {
      services.supabase-manager = {
        enable = true;
        caddy.adminAddress = "unix//var/lib/caddy-admin/admin.sock";
      };
    };

    unix-admin-shared-folder = {
      services.supabase-manager = {
        enable = true;
        caddy.adminAddress = "unix//tmp/admin.sock";
      };
    };

    firewall = {
      services.supabase-manager = {
        enable = true;
        openFirewall = true;
      };
    };

    firewall-http = {
      services.supabase-manager = {
        enable = true;
        openFirewall = true;
        scheme = "http";
        publicPort = 8080;
      };
    };

    custom-data-dir = {
      services.supabase-manager = {
        enable = true;
        dataDir = "/srv/supabase-data";
        domain = "example.dev";
        portRange = "30000-30999";
        settings.github_api = "https://github.example.test/api/v3";
      };
    };

    caddy-https-port = {
      services.caddy.httpsPort = 8443;
      services.supabase-manager.enable = true;
    };

    caddy-https-port-mismatch = {
      services.caddy.httpsPort = 8443;
      services.supabase-manager = {
        enable = true;
        publicPort = 443;
      };
    };

    http-scheme = {
      services.caddy.httpPort = 8080;
      services.supabase-manager = {
        enable = true;
        scheme = "http";
      };
    };

    server-options = {
      services.supabase-manager = {
        enable = true;
        caddy.serverOptions = ''
          trusted_proxies static private_ranges
          timeouts {
            read_header 10s
          }
          protocols h1 h2 h3
        '';
      };
    };

    user-servers-block = {
      services.caddy.globalConfig = ''
        servers :443 {
          protocols h1 h2
        }
      '';
      services.supabase-manager.enable = true;
    };

    user-bare-servers-block = {
      services.caddy.globalConfig = ''
        servers {
          protocols h1 h2
        }
      '';
      services.supabase-manager.enable = true;
    };

    settings-override = {
      services.supabase-manager = {
        enable = true;
        settings = {
          domain = "other.example";
          caddy.admin = "http://localhost:2020";
          caddy.extra = "kept";
        };
      };
    };

    caddy-resume = {
      services.caddy.resume = true;
      services.supabase-manager.enable = true;
    };

    caddy-settings = {
      services.caddy.settings.apps = { };
      services.supabase-manager.enable = true;
    };

    no-maintenance = {
      services.supabase-manager = {
        enable = true;
        maintenance.interval = null;
      };
    };

    remote-admin = {
      services.supabase-manager = {
        enable = true;
        caddy.adminAddress = "http://10.0.0.5:2019";
      };
    };

    backup-local = {
      services.supabase-manager = {
        enable = true;
        backup.enable = true;
      };
    };

    backup-s3 = {
      services.supabase-manager = {
        enable = true;
        backup = {
          enable = true;
          repository = "s3:https://s3.example.test/backups/supabase";
          passwordFile = "/run/secrets/backup-password";
          environmentFile = "/run/secrets/backup.env";
          schedule = "*-*-* 03:30:00";
          keep = {
            daily = 10;
            weekly = 5;
            monthly = 12;
          };
        };
      };
    };

    backup-elsewhere = {
      services.supabase-manager = {
        enable = true;
        backup = {
          enable = true;
          repository = "/mnt/backup/supabase";
          passwordFile = "/run/secrets/backup-password";
        };
      };
    };

    metrics = {
      services.supabase-manager = {
        enable = true;
        metrics.enable = true;
      };
    };

    metrics-public = {
      services.supabase-manager = {
        enable = true;
        metrics = {
          enable = true;
          listenAddress = "0.0.0.0:9100";
          openFirewall = true;
        };
      };
    };

    metrics-loopback-firewall = {
      services.supabase-manager = {
        enable = true;
        metrics = {
          enable = true;
          openFirewall = true;
        };
      };
    };
  };

  bad = {
    port-range = {
      services.supabase-manager.enable = true;
      services.supabase-manager.portRange = "abc";
    };
    scheme = {
      services.supabase-manager.enable = true;
      services.supabase-manager.scheme = "ftp";
    };
    public-port = {
      services.supabase-manager.enable = true;
      services.supabase-manager.publicPort = 70000;
    };
    admin-address = {
      services.supabase-manager.enable = true;
      services.supabase-manager.caddy.adminAddress = "localhost:2019";
    };
    domain = {
      services.supabase-manager.enable = true;
      services.supabase-manager.domain = "Not A Domain";
    };
    data-dir-relative = {
      services.supabase-manager.enable = true;
      services.supabase-manager.dataDir = "data";
    };
    data-dir-space = {
      services.supabase-manager.enable = true;
      services.supabase-manager.dataDir = "/srv/supabase data";
    };
    data-dir-path-literal = {
      services.supabase-manager.enable = true;
      services.supabase-manager.dataDir = /srv/supabase;
    };
    password-file-in-store = {
      services.supabase-manager.enable = true;
      services.supabase-manager.backup.enable = true;
      services.supabase-manager.backup.passwordFile = "/nix/store/00000000000000000000000000000000-password";
    };
    keep-negative = {
      services.supabase-manager.enable = true;
      services.supabase-manager.backup.enable = true;
      services.supabase-manager.backup.keep.daily = -1;
    };
    metrics-listen = {
      services.supabase-manager.enable = true;
      services.supabase-manager.metrics.enable = true;
      services.supabase-manager.metrics.listenAddress = "9464";
    };
    unknown-option = {
      services.supabase-manager.enable = true;
      services.supabase-manager.nosuchoption = 1;
    };
  };
}
