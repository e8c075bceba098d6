from reaseq.cli import main

raise SystemExit(main())
