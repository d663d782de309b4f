"""From flags to fixes: the review page, what to label next (select), and the files training and
other tools read from the decisions (corrections.csv, exclude.txt, Label Studio tasks, imagefolder
metadata)."""
