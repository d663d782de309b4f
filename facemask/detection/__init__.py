"""Faces in scene photos and video (`python -m facemask detect`, the demo's Scene tab): a face
detector run by onnxruntime finds every face, each face's crop goes through the classifier as
`predict` feeds it, faces are followed across video frames, and the results are drawn and tabled.
"""
