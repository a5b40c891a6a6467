{
  "targets": [
    {
      "target_name": "deepfeat_jpeg",
      "sources": ["deepfeat_jpeg.c"],
      "cflags": ["-O2", "-Wall"],
      "libraries": ["-ljpeg"]
    }
  ]
}
