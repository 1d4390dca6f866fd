from popug.cli import main

raise SystemExit(main())
