"""The one compiled part: proxy/_visible.c (see its header for why).

``optional=True``: without a C compiler the install still succeeds and the
scanner checks visibility in Python instead (same scores, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("proxy._visible", ["proxy/_visible.c"], optional=True)])
