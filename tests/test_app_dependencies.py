"""The apps depend on each other one way: histoia (settings, the Celery app) <- experiments <-
predictions. experiments imports nothing of predictions, and app code never imports the
project's Celery app (it uses celery.current_app or shared_task), so either app can be read,
tested and reused without the ones above it. Checked in the source, imports inside functions
and management commands included; migrations are history and are left out."""

import ast

from tests.conftest import REPO


def imports(app: str, root=REPO) -> list[tuple[str, int, str]]:
    """(file, line, module) for every import in the app's Python files, migrations excepted."""
    found = []
    for path in sorted((root / app).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(root)), node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found += [(str(path.relative_to(root)), node.lineno, node.module)]
    return found


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_experiments_imports_nothing_of_predictions():
    assert [i for i in imports("experiments") if under(i[2], "predictions")] == []


def test_app_code_never_imports_the_celery_app():
    for app in ("experiments", "predictions"):
        assert [i for i in imports(app) if under(i[2], "histoia.celery")] == [], app


def test_the_check_sees_imports_inside_functions_but_not_in_migrations(tmp_path):
    command = tmp_path / "someapp" / "management" / "commands" / "seed.py"
    command.parent.mkdir(parents=True)
    command.write_text("def handle():\n    from predictions.models import Prediction\n")
    migration = tmp_path / "someapp" / "migrations" / "0002_data.py"
    migration.parent.mkdir()
    migration.write_text("import predictions.versions\n")
    assert imports("someapp", root=tmp_path) == [("someapp/management/commands/seed.py", 2, "predictions.models")]
