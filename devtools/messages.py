"""The app's translation catalogues: extract their strings and compile them.

``python -m devtools.messages`` (``just messages``) updates
``async_downloads/locale/<language>/LC_MESSAGES/django.po`` from the app and from the
showcase template sets (one catalogue: the sets reuse the app's strings), with
Django's ``makemessages``, then compiles each ``.po`` to the ``.mo`` that is committed
with it (so that installing the package needs no gettext). Both need GNU gettext
(``apt-get install gettext``). ``python -m devtools.messages it`` adds a language
(Italian here) to those the app has. ``--check`` only compiles into a temporary folder
and tells whether the committed ``.mo`` files match their ``.po`` files.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCALE_DIR = ROOT / "async_downloads" / "locale"
#: The folders whose strings go into the app's catalogue; every other top-level entry is ignored.
SOURCES = ("async_downloads", "templates_showcase")
#: The languages the app ships at least; any other with a catalogue under LOCALE_DIR is kept up to date too.
LANGUAGES = ("de", "fr")

__all__ = ["LANGUAGES", "LOCALE_DIR", "ROOT", "SOURCES", "compile_catalogues", "extract", "po_files", "stale_languages"]


def po_files(locale_dir=LOCALE_DIR):
    """The catalogues under ``locale_dir``, by language."""
    return {path.parent.parent.name: path for path in sorted(Path(locale_dir).glob("*/LC_MESSAGES/django.po"))}


def extract(locale_dir=LOCALE_DIR, languages=()):
    """Run ``makemessages`` over ``SOURCES`` into ``locale_dir`` for ``LANGUAGES``, those it has a
    catalogue of, and ``languages`` (in a process of its own: it needs settings of its own and the
    repository as its working directory)."""
    languages = sorted({*LANGUAGES, *po_files(locale_dir), *languages})
    code = f"from devtools.messages import _makemessages; _makemessages({str(locale_dir)!r}, {languages!r})"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def _makemessages(locale_dir, languages):
    import django
    from django.conf import settings
    from django.core.management import call_command

    settings.configure(USE_I18N=True, LOCALE_PATHS=[locale_dir], INSTALLED_APPS=[])
    django.setup()
    ignored = [name for name in os.listdir(ROOT) if name not in SOURCES]
    # Found while walking, the app's own locale folder would take the app's strings, whatever
    # LOCALE_PATHS says (and a check into a temporary folder would rewrite the committed catalogues).
    ignored.append(str(LOCALE_DIR.relative_to(ROOT)))
    call_command(
        "makemessages", locale=languages, ignore_patterns=ignored, add_location="file", no_obsolete=True,
        verbosity=0,
    )


def compile_catalogues(locale_dir=LOCALE_DIR, into=None):
    """``msgfmt --check`` each ``.po`` to its ``.mo`` (beside it, or under ``into``); the ``.mo`` paths."""
    written = []
    for language, po in po_files(locale_dir).items():
        mo = (Path(into) / language / "django.mo") if into else po.with_suffix(".mo")
        mo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["msgfmt", "--check", "-o", str(mo), str(po)], check=True)
        written.append(mo)
    return written


def stale_languages(locale_dir=LOCALE_DIR):
    """The languages whose committed ``.mo`` differs from what its ``.po`` compiles to."""
    import gettext

    stale = []
    with tempfile.TemporaryDirectory() as folder:
        for fresh in compile_catalogues(locale_dir, into=folder):
            language = fresh.parent.name
            committed = Path(locale_dir) / language / "LC_MESSAGES" / "django.mo"
            with open(fresh, "rb") as new:
                expected = gettext.GNUTranslations(new)._catalog
            if not committed.exists():
                stale.append(language)
                continue
            with open(committed, "rb") as old:
                if gettext.GNUTranslations(old)._catalog != expected:
                    stale.append(language)
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only tell whether the .mo files are up to date")
    parser.add_argument("languages", nargs="*", help="languages to add (their catalogues are created)")
    options = parser.parse_args(argv)
    if options.check:
        stale = stale_languages()
        if stale:
            print(f"Out of date: {', '.join(stale)} (run `just messages`).", file=sys.stderr)
            return 1
        return 0
    extract(languages=options.languages)
    for mo in compile_catalogues():
        print(mo.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
