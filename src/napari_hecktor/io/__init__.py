"""Reading and writing volumes, datasets and DICOM series; geometry and SUV."""
