"""Builds the optional C extension fmq_loader.images._jpegregion (region + reduced-scale JPEG decoding).

It links libjpeg-turbo (Debian/Ubuntu: libjpeg62-turbo-dev or libturbojpeg0-dev; Fedora:
libjpeg-turbo-devel; Homebrew: jpeg-turbo). Where it cannot be built, installation goes on
without it and fmq_loader decodes with simplejpeg or Pillow instead (fmq_loader/images/decode.py).
Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A build failure is a warning: the extension only makes decoding faster."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, say
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # no libjpeg headers, say
            self._skip(exc)

    @staticmethod
    def _skip(exc):
        print(f"WARNING: fmq_loader.images._jpegregion was not built ({type(exc).__name__}: {exc}); "
              "JPEGs will be decoded with simplejpeg or Pillow instead. Install libjpeg-turbo's "
              "headers (e.g. apt-get install libjpeg62-turbo-dev) and reinstall for the fast "
              "region decoder.")


setup(
    ext_modules=[Extension("fmq_loader.images._jpegregion", ["fmq_loader/images/_jpegregion.c"],
                           libraries=["jpeg"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
