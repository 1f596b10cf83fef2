"""Start-up hooks and the pytest entry point; never imported by the library.

Strictly private. Each file here must work *without* importing the
``mlx_vlm_safe`` package, whose import side effect is the activation itself.
Three activate the patch at interpreter start, without a line of the program
changed:

* ``mlx_vlm_safe_autopatch.pth``: copied by the wheel into site-packages.
  Python runs its one line in every interpreter of the environment; the line
  only reads ``MLX_VLM_SAFE_AUTOPATCH`` and imports nothing while it is unset
  or off (empty, 0, false, no, off).
* ``_mlx_vlm_safe_autopatch.py``: what that line imports once the variable is
  set. Also copied to the top of site-packages, because it must be importable
  *without* importing the ``mlx_vlm_safe`` package (whose import side effect is
  the activation itself).
* ``sitecustomize.py``: ``mlx-vlm-safe run`` puts this folder first on
  ``PYTHONPATH``, so the program and every Python child it starts import it.
  That path works with any install (wheel, editable, a plain ``PYTHONPATH``
  checkout), whereas the ``.pth`` file exists only where the wheel put it.

The fourth, ``_mlx_vlm_safe_pytest.py``, is the pytest plugin's entry point,
copied to the top of site-packages as well: pytest loads it in every session,
which must not patch mlx-vlm unless a test uses one of its fixtures.

The ``__init__`` exists so that type checkers and linters see a package.
"""
