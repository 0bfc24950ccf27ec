"""Face stage of the pack: identity, landmarks and the ID adapter.

Modules (imported explicitly by their users; nothing heavy is imported here, so ``core.face`` loads
without insightface or MediaPipe):
  * ``detect``         -- insightface detection + ArcFace embedding -> ``FaceID`` (the "ID Embed" node)
  * ``landmarks``      -- MediaPipe FaceMesh, 478 points of the portrait
  * ``align``          -- ray casting onto a mesh and the robust similarity fit that places the 478
                          points on the head mesh -> ``FaceLandmarks3D``
  * ``landmark_image`` -- landmark images as the MediaPipe-face ControlNet expects them
  * ``segment``        -- the portrait's head mask (person segmentation ∪ face oval, as face parsing > 0)
  * ``id_adapter``     -- IP-Adapter FaceID projection models and their attention maths
"""
