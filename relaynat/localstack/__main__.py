"""C{python -m relaynat.localstack}: L{relaynat.localstack.serve.main}."""

from relaynat.localstack.serve import main

main()
