"""Built-in engines, one package each, loaded by name through the registry's entry points.

Each package's ``__init__`` declares its module types (plain data, cheap to import); the
executor sits in a submodule imported only when a node of that engine runs. Engines do not
import each other.
"""

__all__: list[str] = []
