"""Face stage of the pack: identity, landmarks and the ID adapter.

Modules (imported explicitly by their users; nothing heavy is imported here, so ``core.face`` loads
without insightface or MediaPipe):
  * ``detect``         -- insightface detection + ArcFace embedding -> ``FaceID`` (the "ID Embed" node)
  * ``landmarks``      -- MediaPipe FaceMesh, 478 points of the portrait
  * ``align``          -- places the 478 points on the head mesh -> ``FaceLandmarks3D``
  * ``raycast``        -- first hits of rays on a triangle mesh, world rays through a camera's pixels
  * ``similarity``     -- Umeyama and RANSAC similarity fits between 3D point sets
  * ``landmark_image`` -- landmark images as the MediaPipe-face ControlNet expects them
  * ``segment``        -- the portrait's head mask (person segmentation ∪ face oval, as face parsing > 0)
  * ``id_adapter``     -- IP-Adapter FaceID projection models and their attention maths
"""
