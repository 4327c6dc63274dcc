from pgshard.cli import main

main()
