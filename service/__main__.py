from service.cli import main

if __name__ == "__main__":  # not when a process of `rebuild --processes` starts (spawn)
    raise SystemExit(main())
