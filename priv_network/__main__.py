from priv_network.cli import main

raise SystemExit(main())
