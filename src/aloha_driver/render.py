"""Offscreen camera rendering for the simulator: colour, metric depth and object segmentation.

No ROS here. `mujoco.Renderer` needs one full render pass per output (colour, depth,
segmentation) and decodes segmentation with a Python loop over the scene per frame. Here colour
and depth come from one pass and segmentation from a second, only when asked for, which matters
on a CPU-only machine where each pass of four cameras costs tens of milliseconds.
"""
from __future__ import annotations

import os

import mujoco
import numpy as np
from mujoco import gl_context

_RND = mujoco.mjtRndFlag


class RenderError(RuntimeError):
    """The renderer cannot produce what was asked (closed, unknown camera, size too large)."""


class CameraRenderer:
    """One OpenGL context and scene, reused for every camera and frame of one model.

    The GL context belongs to the thread that first renders: create, render and close from the
    same thread.
    """

    def __init__(self, model: mujoco.MjModel, width: int, height: int,
                 geom_segmentation: np.ndarray | None = None, max_geom: int = 2000):
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise RenderError(
                f"{width}x{height} exceeds the model's offscreen buffer "
                f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}")
        backend = getattr(gl_context.GLContext, "__module__", "")
        if not backend or (backend.startswith("mujoco.glfw") and not os.environ.get("DISPLAY")):
            raise RenderError(f"MuJoCo's OpenGL backend is {backend or 'missing'}; without a "
                              "display set MUJOCO_GL=egl (or osmesa) before mujoco is imported")
        self.width, self.height = int(width), int(height)
        self._model = model
        # geom id -> value written into segmentation images (0 = not an object).
        self._geom_segmentation = (np.zeros(model.ngeom, np.uint16) if geom_segmentation is None
                                   else np.asarray(geom_segmentation, np.uint16))
        self._gl = gl_context.GLContext(self.width, self.height)
        self._gl.make_current()
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZERONEAR
        self._scene = mujoco.MjvScene(model, maxgeom=max_geom)
        self._scene.flags[_RND.mjRND_SHADOW] = False
        self._scene.flags[_RND.mjRND_REFLECTION] = False
        self._option = mujoco.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._depth = np.empty((self.height, self.width), np.float32)
        extent = model.stat.extent
        self._near = float(model.vis.map.znear * extent)
        self._far = float(model.vis.map.zfar * extent)

    @property
    def closed(self) -> bool:
        return self._context is None

    def close(self) -> None:
        """Free the GL context now (left to the garbage collector, EGL fails at exit)."""
        if self._context is not None:
            self._context.free()
            self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None

    def render(self, data: mujoco.MjData, camera_id: int, depth: bool = True,
               segmentation: bool = True) -> dict[str, np.ndarray]:
        """rgb (H,W,3) uint8; depth (H,W) float32 z-depth in metres; segmentation (H,W) uint16."""
        if self.closed:
            raise RenderError("render() after close()")
        if not 0 <= camera_id < self._model.ncam:
            raise RenderError(f"camera id {camera_id} out of range (model has {self._model.ncam})")
        self._gl.make_current()
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(self._model, data, self._option, self._perturb, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._rgb, self._depth if depth else None, self._rect, self._context)
        out = {"rgb": np.flipud(self._rgb).copy()}     # OpenGL rows run bottom-up
        if depth:
            out["depth"] = np.flipud(self._linear_depth(self._depth))
        if segmentation:
            out["segmentation"] = np.flipud(self._segmentation())
        return out

    def _linear_depth(self, buffer: np.ndarray) -> np.ndarray:
        """Depth-buffer values (0 at the near plane, 1 at the far one) -> metres along the axis.

        Pixels that see nothing (the far plane) become +inf, "too far" in REP 118's terms.
        """
        near, far = self._near, self._far
        d = buffer.astype(np.float64)
        z = near * far / (far - d * (far - near))
        z[d >= 1.0] = np.inf
        return z.astype(np.float32)

    def _segmentation(self) -> np.ndarray:
        """A second pass that paints each geom with its index in the scene, mapped to object ids."""
        flags = self._scene.flags
        flags[_RND.mjRND_SEGMENT] = flags[_RND.mjRND_IDCOLOR] = True
        try:
            mujoco.mjr_render(self._rect, self._scene, self._context)
            mujoco.mjr_readPixels(self._rgb, None, self._rect, self._context)
        finally:
            flags[_RND.mjRND_SEGMENT] = flags[_RND.mjRND_IDCOLOR] = False
        lut = np.zeros(self._scene.ngeom + 1, np.uint16)    # colour code 0 is the background
        for i in range(self._scene.ngeom):
            geom = self._scene.geoms[i]
            if geom.objtype == mujoco.mjtObj.mjOBJ_GEOM and geom.segid >= 0:
                lut[geom.segid + 1] = self._geom_segmentation[geom.objid]
        code = self._rgb.astype(np.uint32)
        code = code[..., 0] | (code[..., 1] << 8) | (code[..., 2] << 16)
        return lut[np.minimum(code, self._scene.ngeom)]
