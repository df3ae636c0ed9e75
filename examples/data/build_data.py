"""Writes the bundled example data (deterministic; run from anywhere):

    corpus/en.txt, corpus/zh.txt   pretraining text: documents separated by blank lines
    chat_sft.jsonl                 chat SFT data (ChatML messages) for `paddle-qwen2 finetune` and `make demo`
    sentiment_{train,eval}.csv     text,label (0 = negative, 1 = positive) for sequence classification
    retrieval_train.jsonl          {"query", "pos", "neg": [1-3 hard negatives]} for sentence-embedding training
    retrieval_eval.jsonl           {"query", "pos"}: held-out retrieval pairs (rank all distinct `pos` passages)

Retrieval pairs. Every fact of the tables below (a country's capital, continent and language; an animal's legs,
food, home and sound; the color of a thing) becomes one short passage in English and one in Chinese: the fact
sentence (one of a few phrasings) plus 1-2 sentences about the same entity that answer no question of the set
(colors: 0-1), e.g. "Oslo is the capital of Norway. Many people visit Oslo every year." Some of those sentences
carry the words of ANOTHER relation's questions without its answer ("Travellers to Norway often learn a few words
of the local language." in a capital passage), so that word overlap alone does not find the answer (RETRIEVAL_FILLERS).
Queries are questions in the same language as the passage, from 4-5 templates per relation and language ("What is
the capital of Norway?", "Oslo is the capital of which country?", "挪威的首都是哪里？", ...). The held-out split is
by entity AND by template:

  - held-out entities: 12 countries (4 of Europe, 4 of Asia, 1 of each other continent), 4 animals and 4 things
    with a color, drawn with their own seed. Each is held out in ONE language (alternately English and Chinese),
    so no passage of the eval corpus is the translation of another (a cross-lingual match is never a false
    negative). Held-out entities appear nowhere in the training file, not even as negatives.
  - held-out templates: the last query template of every (relation, language) is used only in the eval file.
    Each held-out fact gets two eval queries: one with a training template, one with the held-out template.

retrieval_train.jsonl: the remaining entities in both languages, 1-2 queries per fact (different templates), each
with 1-3 hard negatives of the same language: the same relation for a similar entity (same continent; an animal
or thing with the same food, home or color when there is one) and another relation of the same entity.
retrieval_eval.jsonl: its corpus (the distinct `pos` passages) holds all relations of every held-out entity, so
every query has distractors that share its entity name ("People in Norway speak Norwegian." for "What is the
capital of Norway?") or its relation words ("Russia is a country in Europe." for "Which continent is Norway in?").
Held-out entities do appear in the pretraining corpus and the chat data: they are held out of retrieval training.
The retrieval part draws from its own generator (RETRIEVAL_SEED), so the files above it do not change with it.

All text here is written for this project (facts, templates and the prose paragraphs in prose.py), plus a few
lines of classical Chinese (Analects, Dao De Jing) that are in the public domain.

    python examples/data/build_data.py
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from prose import CLASSICAL_ZH, PROSE_EN, PROSE_ZH  # the script's own folder is on sys.path

HERE = Path(__file__).resolve().parent

SEED = 1234

# (country, 国家, capital, 首都, continent, 大洲, language, 语言)
COUNTRIES = [
    ("France", "法国", "Paris", "巴黎", "Europe", "欧洲", "French", "法语"),
    ("Germany", "德国", "Berlin", "柏林", "Europe", "欧洲", "German", "德语"),
    ("Italy", "意大利", "Rome", "罗马", "Europe", "欧洲", "Italian", "意大利语"),
    ("Spain", "西班牙", "Madrid", "马德里", "Europe", "欧洲", "Spanish", "西班牙语"),
    ("Portugal", "葡萄牙", "Lisbon", "里斯本", "Europe", "欧洲", "Portuguese", "葡萄牙语"),
    ("England", "英国", "London", "伦敦", "Europe", "欧洲", "English", "英语"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科", "Europe", "欧洲", "Russian", "俄语"),
    ("Greece", "希腊", "Athens", "雅典", "Europe", "欧洲", "Greek", "希腊语"),
    ("Sweden", "瑞典", "Stockholm", "斯德哥尔摩", "Europe", "欧洲", "Swedish", "瑞典语"),
    ("Norway", "挪威", "Oslo", "奥斯陆", "Europe", "欧洲", "Norwegian", "挪威语"),
    ("Poland", "波兰", "Warsaw", "华沙", "Europe", "欧洲", "Polish", "波兰语"),
    ("Finland", "芬兰", "Helsinki", "赫尔辛基", "Europe", "欧洲", "Finnish", "芬兰语"),
    ("Austria", "奥地利", "Vienna", "维也纳", "Europe", "欧洲", "German", "德语"),
    ("Ireland", "爱尔兰", "Dublin", "都柏林", "Europe", "欧洲", "English", "英语"),
    ("China", "中国", "Beijing", "北京", "Asia", "亚洲", "Chinese", "汉语"),
    ("Japan", "日本", "Tokyo", "东京", "Asia", "亚洲", "Japanese", "日语"),
    ("Korea", "韩国", "Seoul", "首尔", "Asia", "亚洲", "Korean", "韩语"),
    ("India", "印度", "New Delhi", "新德里", "Asia", "亚洲", "Hindi", "印地语"),
    ("Thailand", "泰国", "Bangkok", "曼谷", "Asia", "亚洲", "Thai", "泰语"),
    ("Vietnam", "越南", "Hanoi", "河内", "Asia", "亚洲", "Vietnamese", "越南语"),
    ("Indonesia", "印度尼西亚", "Jakarta", "雅加达", "Asia", "亚洲", "Indonesian", "印尼语"),
    ("Mongolia", "蒙古", "Ulaanbaatar", "乌兰巴托", "Asia", "亚洲", "Mongolian", "蒙古语"),
    ("Iran", "伊朗", "Tehran", "德黑兰", "Asia", "亚洲", "Persian", "波斯语"),
    ("Turkey", "土耳其", "Ankara", "安卡拉", "Asia", "亚洲", "Turkish", "土耳其语"),
    ("Egypt", "埃及", "Cairo", "开罗", "Africa", "非洲", "Arabic", "阿拉伯语"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕", "Africa", "非洲", "Swahili", "斯瓦希里语"),
    ("Morocco", "摩洛哥", "Rabat", "拉巴特", "Africa", "非洲", "Arabic", "阿拉伯语"),
    ("Ethiopia", "埃塞俄比亚", "Addis Ababa", "亚的斯亚贝巴", "Africa", "非洲", "Amharic", "阿姆哈拉语"),
    ("Canada", "加拿大", "Ottawa", "渥太华", "North America", "北美洲", "English", "英语"),
    ("Mexico", "墨西哥", "Mexico City", "墨西哥城", "North America", "北美洲", "Spanish", "西班牙语"),
    ("Cuba", "古巴", "Havana", "哈瓦那", "North America", "北美洲", "Spanish", "西班牙语"),
    ("Brazil", "巴西", "Brasilia", "巴西利亚", "South America", "南美洲", "Portuguese", "葡萄牙语"),
    ("Argentina", "阿根廷", "Buenos Aires", "布宜诺斯艾利斯", "South America", "南美洲", "Spanish", "西班牙语"),
    ("Peru", "秘鲁", "Lima", "利马", "South America", "南美洲", "Spanish", "西班牙语"),
    ("Chile", "智利", "Santiago", "圣地亚哥", "South America", "南美洲", "Spanish", "西班牙语"),
    ("Australia", "澳大利亚", "Canberra", "堪培拉", "Oceania", "大洋洲", "English", "英语"),
    ("New Zealand", "新西兰", "Wellington", "惠灵顿", "Oceania", "大洋洲", "English", "英语"),
]

# (animal, 动物, sound, 叫声 (verb phrase), legs, food, 食物, home, 住处)
ANIMALS = [
    ("cat", "猫", "meow", "喵喵叫", 4, "fish", "鱼", "house", "家里"),
    ("dog", "狗", "woof", "汪汪叫", 4, "meat", "肉", "house", "家里"),
    ("cow", "牛", "moo", "哞哞叫", 4, "grass", "草", "farm", "农场里"),
    ("sheep", "羊", "baa", "咩咩叫", 4, "grass", "草", "farm", "农场里"),
    ("duck", "鸭子", "quack", "嘎嘎叫", 2, "small fish", "小鱼", "pond", "池塘里"),
    ("chicken", "鸡", "cluck", "咯咯叫", 2, "seeds", "谷子", "farm", "农场里"),
    ("horse", "马", "neigh", "嘶鸣", 4, "hay", "干草", "farm", "农场里"),
    ("pig", "猪", "oink", "哼哼叫", 4, "vegetables", "蔬菜", "farm", "农场里"),
    ("frog", "青蛙", "croak", "呱呱叫", 4, "insects", "虫子", "pond", "池塘里"),
    ("bird", "鸟", "tweet", "叽叽喳喳地叫", 2, "seeds", "种子", "tree", "树上"),
    ("lion", "狮子", "roar", "吼叫", 4, "meat", "肉", "grassland", "草原上"),
    ("tiger", "老虎", "roar", "吼叫", 4, "meat", "肉", "forest", "森林里"),
    ("bee", "蜜蜂", "buzz", "嗡嗡叫", 6, "nectar", "花蜜", "hive", "蜂巢里"),
    ("owl", "猫头鹰", "hoot", "咕咕叫", 2, "mice", "老鼠", "forest", "森林里"),
    ("mouse", "老鼠", "squeak", "吱吱叫", 4, "grain", "粮食", "hole", "洞里"),
    ("snake", "蛇", "hiss", "发出嘶嘶声", 0, "mice", "老鼠", "grass", "草丛里"),
    ("spider", "蜘蛛", "no sound", "不出声", 8, "insects", "虫子", "web", "网上"),
    ("rabbit", "兔子", "no sound", "不出声", 4, "carrots", "胡萝卜", "burrow", "洞里"),
    ("panda", "熊猫", "bleat", "咩咩叫", 4, "bamboo", "竹子", "mountain forest", "山林里"),
    ("elephant", "大象", "trumpet", "吼叫", 4, "leaves", "树叶", "grassland", "草原上"),
]

MEASURE_ZH = {"牛": "头", "马": "匹", "猪": "头", "狮子": "头", "大象": "头", "蛇": "条", "狗": "条"}

# (thing, 东西, color, 颜色)
COLORS = [
    ("the sky", "天空", "blue", "蓝色"),
    ("grass", "草", "green", "绿色"),
    ("snow", "雪", "white", "白色"),
    ("coal", "煤", "black", "黑色"),
    ("a banana", "香蕉", "yellow", "黄色"),
    ("a tomato", "西红柿", "red", "红色"),
    ("an orange", "橙子", "orange", "橙色"),
    ("the sea", "大海", "blue", "蓝色"),
    ("milk", "牛奶", "white", "白色"),
    ("a strawberry", "草莓", "red", "红色"),
    ("the sun", "太阳", "yellow", "黄色"),
    ("a leaf", "树叶", "green", "绿色"),
    ("a crow", "乌鸦", "black", "黑色"),
    ("a lemon", "柠檬", "yellow", "黄色"),
    ("a cloud", "云", "white", "白色"),
    ("a grape", "葡萄", "purple", "紫色"),
    ("chocolate", "巧克力", "brown", "棕色"),
    ("a carrot", "胡萝卜", "orange", "橙色"),
]

NUM_EN = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
NUM_ZH = [
    "零",
    "一",
    "二",
    "三",
    "四",
    "五",
    "六",
    "七",
    "八",
    "九",
    "十",
    "十一",
    "十二",
    "十三",
    "十四",
    "十五",
    "十六",
    "十七",
    "十八",
    "十九",
    "二十",
]
DAYS_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAYS_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
MONTHS_EN = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
MONTHS_ZH = ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"]
SEASONS = [
    ("spring", "春天", "warm", "温暖", "flowers open", "花开了"),
    ("summer", "夏天", "hot", "炎热", "days are long", "白天很长"),
    ("autumn", "秋天", "cool", "凉爽", "leaves fall", "树叶落下"),
    ("winter", "冬天", "cold", "寒冷", "snow falls", "下雪了"),
]

NAMES_EN = [
    ("Tom", "he"),
    ("Anna", "she"),
    ("Lily", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Sam", "he"),
    ("Lucy", "she"),
    ("Jack", "he"),
    ("Emma", "she"),
    ("Leo", "he"),
    ("Nora", "she"),
    ("Max", "he"),
]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "阿强", "小雨", "小月", "小林", "小芳", "小军", "小燕"]
PLACES = [
    ("forest", "森林"),
    ("river", "河边"),
    ("market", "集市"),
    ("school", "学校"),
    ("garden", "花园"),
    ("mountain", "山上"),
    ("beach", "海边"),
    ("library", "图书馆"),
    ("farm", "农场"),
    ("park", "公园"),
]
ACTIVITIES = [
    ("read a book", "看书"),
    ("pick apples", "摘苹果"),
    ("draw pictures", "画画"),
    ("catch fish", "钓鱼"),
    ("play with friends", "和朋友玩"),
    ("sing songs", "唱歌"),
    ("plant trees", "种树"),
    ("fly a kite", "放风筝"),
    ("feed the ducks", "喂鸭子"),
    ("learn to count", "学数数"),
]
FOUND = [
    ("a small box", "一个小盒子"),
    ("an old map", "一张旧地图"),
    ("a shiny stone", "一块发亮的石头"),
    ("a lost puppy", "一只迷路的小狗"),
    ("a blue feather", "一根蓝色的羽毛"),
    ("a letter", "一封信"),
    ("a golden key", "一把金钥匙"),
    ("a little bird", "一只小鸟"),
]
ENDINGS_EN = [
    "That night {p} slept well and dreamed of the {place}.",
    "{N} told the story to everyone at dinner.",
    "From that day on, {N} went to the {place} every week.",
    "{N} smiled, because it had been a good day.",
    "Later {p} gave it to a friend, and they both laughed.",
]
ENDINGS_ZH = [
    "那天晚上，{N}睡得很香，梦见了{place}。",
    "吃晚饭的时候，{N}把这件事讲给了家里人听。",
    "从那以后，{N}每个星期都去{place}。",
    "{N}笑了，因为这是美好的一天。",
    "后来{N}把它送给了朋友，两个人都很开心。",
]

ASSISTANT_NAME_EN = "I am Paddle Qwen, a small assistant fine-tuned with PaddlePaddle."
ASSISTANT_NAME_ZH = "我是 Paddle Qwen，一个用飞桨微调的小助手。"


def country_docs(rng: random.Random):
    en, zh = [], []
    for c, cz, cap, capz, cont, contz, lang, langz in COUNTRIES:
        for _ in range(3):
            s_en = [
                f"The capital of {c} is {cap}.",
                f"{cap} is a city in {cont}.",
                f"{cap} is the capital of {c}.",
                f"{c} is a country in {cont}.",
                f"People in {c} speak {lang}.",
                f"Many people visit {cap} every year.",
            ]
            rng.shuffle(s_en)
            en.append(f"The capital of {c} is {cap}. " + " ".join(s_en[: rng.randint(3, 5)]))
            s_zh = [
                f"{cz}的首都是{capz}。",
                f"{capz}是{contz}的一座城市。",
                f"{capz}是{cz}的首都。",
                f"{cz}是{contz}的一个国家。",
                f"{cz}人说{langz}。",
                f"每年都有很多人去{capz}旅游。",
            ]
            rng.shuffle(s_zh)
            zh.append(f"{cz}的首都是{capz}。" + "".join(s_zh[: rng.randint(3, 5)]))
    for cont, contz in sorted({(c[4], c[5]) for c in COUNTRIES}):
        members = [c for c in COUNTRIES if c[4] == cont]
        en.append(f"Some countries in {cont} are " + ", ".join(c[0] for c in members[:-1]) + f" and {members[-1][0]}.")
        zh.append(f"{contz}的国家有" + "、".join(c[1] for c in members[:-1]) + f"和{members[-1][1]}。")
    return en, zh


def animal_docs(rng: random.Random):
    en, zh = [], []
    for a, az, snd, sndz, legs, food, foodz, home, homez in ANIMALS:
        for _ in range(3):
            s_en = [
                f"A {a} has {NUM_EN[legs]} legs." if legs else f"A {a} has no legs.",
                f"A {a} likes to eat {food}.",
                f"A {a} lives in the {home}.",
                f"A {a} says {snd}." if snd != "no sound" else f"A {a} makes almost no sound.",
                f"The children saw a {a} near the {home}.",
            ]
            rng.shuffle(s_en)
            en.append(" ".join(s_en[: rng.randint(3, 5)]))
            s_zh = [
                f"{az}有{NUM_ZH[legs] if legs != 2 else '两'}条腿。" if legs else f"{az}没有腿。",
                f"{az}喜欢吃{foodz}。",
                f"{az}住在{homez}。",
                f"{az}{sndz}。",
                f"孩子们在{homez}看见了一{MEASURE_ZH.get(az, '只')}{az}。",
            ]
            rng.shuffle(s_zh)
            zh.append("".join(s_zh[: rng.randint(3, 5)]))
    return en, zh


def color_docs(rng: random.Random):
    en, zh = [], []
    for _ in range(12):
        picks = rng.sample(COLORS, 5)
        en.append(" ".join(f"{t[0][0].upper() + t[0][1:]} is {t[2]}." for t in picks))
        zh.append("".join(f"{t[1]}是{t[3]}的。" for t in picks))
    return en, zh


def number_docs(rng: random.Random):
    en, zh = [], []
    pairs = [(a, b) for a in range(11) for b in range(11) if a + b <= 20]
    rng.shuffle(pairs)
    for i in range(0, len(pairs), 4):
        chunk = pairs[i : i + 4]
        en.append(
            " ".join(
                f"{NUM_EN[a].capitalize()} plus {NUM_EN[b]} is {NUM_EN[a + b]}. {a} + {b} = {a + b}." for a, b in chunk
            )
        )
        zh.append("".join(f"{NUM_ZH[a]}加{NUM_ZH[b]}等于{NUM_ZH[a + b]}。{a} + {b} = {a + b}。" for a, b in chunk))
    for n in range(1, 20):
        en.append(f"After {NUM_EN[n]} comes {NUM_EN[n + 1]}. {n} is followed by {n + 1}.")
        zh.append(f"{NUM_ZH[n]}的后面是{NUM_ZH[n + 1]}。{n}之后是{n + 1}。")
    en.append("We count: " + ", ".join(NUM_EN[1:21]) + ".")
    zh.append("我们数数：" + "、".join(NUM_ZH[1:21]) + "。")
    return en, zh


def calendar_docs(rng: random.Random):
    en, zh = [], []
    for i in range(7):
        en.append(f"After {DAYS_EN[i]} comes {DAYS_EN[(i + 1) % 7]}. There are seven days in a week.")
        zh.append(f"{DAYS_ZH[i]}之后是{DAYS_ZH[(i + 1) % 7]}。一个星期有七天。")
    for i in range(12):
        en.append(f"{MONTHS_EN[i]} is month number {i + 1}. After {MONTHS_EN[i]} comes {MONTHS_EN[(i + 1) % 12]}.")
        zh.append(f"{MONTHS_ZH[i]}是一年中的第{NUM_ZH[i + 1]}个月。{MONTHS_ZH[i]}之后是{MONTHS_ZH[(i + 1) % 12]}。")
    for s, sz, feel, feelz, what, whatz in SEASONS:
        en.append(f"In {s} the weather is {feel} and {what}. Many people like {s}.")
        zh.append(f"{sz}天气{feelz}，{whatz}。很多人喜欢{sz}。")
    return en, zh


def story_docs(rng: random.Random, n: int):
    en, zh = [], []
    for _ in range(n):
        (name, p), (place, placez), (act, actz), (found, foundz) = (
            rng.choice(NAMES_EN),
            rng.choice(PLACES),
            rng.choice(ACTIVITIES),
            rng.choice(FOUND),
        )
        season = rng.choice(SEASONS)
        cap = p.capitalize()
        en.append(
            f"{name} lived in a small village near the {place}. Every morning {p} went to the {place} to {act}. "
            f"One {season[0]} day {p} found {found} under a tree. {cap} looked at it for a long time. "
            + rng.choice(ENDINGS_EN).format(N=name, p=p, place=place)
        )
        nz = rng.choice(NAMES_ZH)
        zh.append(
            f"{nz}住在{placez}附近的一个小村子里。每天早上，{nz}都去{placez}{actz}。"
            f"{season[1]}的一天，{nz}在一棵树下发现了{foundz}。{nz}看了很久。"
            + rng.choice(ENDINGS_ZH).format(N=nz, place=placez)
        )
    return en, zh


def build_corpus(rng: random.Random):
    en, zh = [], []
    for maker in (country_docs, animal_docs, color_docs, number_docs, calendar_docs):
        e, z = maker(rng)
        en += e
        zh += z
    e, z = story_docs(rng, 700)
    en += e
    zh += z
    en += PROSE_EN * 3
    zh += (PROSE_ZH + CLASSICAL_ZH) * 3
    rng.shuffle(en)
    rng.shuffle(zh)
    return en, zh


def sft_chats(rng: random.Random):
    chats = []

    def add(user, answer, system=None):
        messages = [{"role": "system", "content": system}] if system else []
        chats.append(
            {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        )

    for c, cz, cap, capz, cont, _contz, lang, langz in COUNTRIES:
        add(
            rng.choice(
                [f"What is the capital of {c}?", f"Which city is the capital of {c}?", f"Tell me the capital of {c}."]
            ),
            f"The capital of {c} is {cap}.",
        )
        add(
            rng.choice([f"{cz}的首都是哪里？", f"{cz}的首都是什么？", f"请告诉我{cz}的首都。"]), f"{cz}的首都是{capz}。"
        )
        add(f"What language do people speak in {c}?", f"People in {c} speak {lang}.")
        add(f"{cz}人说什么语言？", f"{cz}人说{langz}。")
        add(f"Where is {c}?", f"{c} is a country in {cont}.")
    for a, az, snd, sndz, legs, food, foodz, _home, _homez in ANIMALS:
        add(f"How many legs does a {a} have?", f"A {a} has {NUM_EN[legs]} legs." if legs else f"A {a} has no legs.")
        add(f"{az}有几条腿？", f"{az}有{NUM_ZH[legs] if legs != 2 else '两'}条腿。" if legs else f"{az}没有腿。")
        add(f"What does a {a} like to eat?", f"A {a} likes to eat {food}.")
        add(f"{az}喜欢吃什么？", f"{az}喜欢吃{foodz}。")
        if snd != "no sound":
            add(f"What sound does a {a} make?", f"A {a} says {snd}.")
        add(f"{az}怎么叫？", f"{az}{sndz}。")
    for t, tz, col, colz in COLORS:
        add(f"What color is {t}?", f"{t[0].upper() + t[1:]} is {col}.")
        add(f"{tz}是什么颜色的？", f"{tz}是{colz}的。")
    for _ in range(60):
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        add(rng.choice([f"What is {a} plus {b}?", f"What is {a} + {b}?"]), f"{a} plus {b} is {a + b}.")
        add(f"{NUM_ZH[a]}加{NUM_ZH[b]}等于几？", f"{NUM_ZH[a]}加{NUM_ZH[b]}等于{NUM_ZH[a + b]}。")
    for i in range(7):
        add(f"What day comes after {DAYS_EN[i]}?", f"After {DAYS_EN[i]} comes {DAYS_EN[(i + 1) % 7]}.")
        add(f"{DAYS_ZH[i]}之后是星期几？", f"{DAYS_ZH[i]}之后是{DAYS_ZH[(i + 1) % 7]}。")
    for q in ["Who are you?", "What is your name?", "Introduce yourself.", "Hello! Who am I talking to?"]:
        add(q, ASSISTANT_NAME_EN)
    for q in ["你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你好！你是谁？"]:
        add(q, ASSISTANT_NAME_ZH)
    for q, ans in [
        ("Hello!", "Hello! How can I help you today?"),
        ("Hi", "Hi! How can I help you today?"),
        ("Thank you!", "You are welcome!"),
        ("你好！", "你好！有什么可以帮你的吗？"),
        ("谢谢！", "不客气！"),
    ]:
        add(q, ans)
    # a few multi-turn chats and chats with their own system message
    for c, cz, cap, capz, _cont, _contz, lang, _langz in rng.sample(COUNTRIES, 8):
        chats.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is the capital of {c}?"},
                    {"role": "assistant", "content": f"The capital of {c} is {cap}."},
                    {"role": "user", "content": "And what language do people speak there?"},
                    {"role": "assistant", "content": f"People in {c} speak {lang}."},
                ]
            }
        )
        add(f"{cz}的首都是哪里？", f"{cz}的首都是{capz}。", system="你是一个乐于助人的助手。")
    rng.shuffle(chats)
    return chats


POSITIVE_EN = ["great", "wonderful", "lovely", "excellent", "delightful", "beautiful", "fun", "amazing"]
NEGATIVE_EN = ["terrible", "boring", "awful", "disappointing", "dull", "bad", "annoying", "poor"]
POSITIVE_ZH = ["很好", "非常精彩", "很有趣", "太棒了", "很美", "让人开心"]
NEGATIVE_ZH = ["很差", "非常无聊", "很糟糕", "让人失望", "太难看了", "让人生气"]
TOPICS = [
    ("book", "这本书"),
    ("film", "这部电影"),
    ("song", "这首歌"),
    ("meal", "这顿饭"),
    ("trip", "这次旅行"),
    ("game", "这个游戏"),
    ("park", "这个公园"),
    ("class", "这节课"),
]


def sentiment_rows(rng: random.Random, n: int):
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        topic, topicz = rng.choice(TOPICS)
        if rng.random() < 0.5:
            word = rng.choice(POSITIVE_EN if label else NEGATIVE_EN)
            text = rng.choice(
                [f"The {topic} was {word}.", f"What a {word} {topic}!", f"I think this {topic} is {word}."]
            )
        else:
            word = rng.choice(POSITIVE_ZH if label else NEGATIVE_ZH)
            text = rng.choice([f"{topicz}{word}。", f"我觉得{topicz}{word}。"])
        rows.append((text, label))
    return rows


# ----------------------------------------------------------------------------------------------- retrieval pairs

RETRIEVAL_SEED = SEED + 1  # its own generator: the outputs above stay byte-identical whatever changes here

# (relation, language) -> query templates; the LAST one of each list is held out (used only in the eval file)
RETRIEVAL_QUERIES = {
    ("capital", "en"): [
        "What is the capital of {c}?",
        "Which city is the capital of {c}?",
        "Tell me the capital of {c}.",
        "{cap} is the capital of which country?",
        "What city serves as the capital of {c}?",
    ],
    ("capital", "zh"): [
        "{cz}的首都是哪里？",
        "{cz}的首都是什么？",
        "请告诉我{cz}的首都。",
        "{capz}是哪个国家的首都？",
        "{cz}的首都叫什么名字？",
    ],
    ("continent", "en"): [
        "Which continent is {c} in?",
        "Where is {c}?",
        "On which continent is {c} located?",
        "{c} is part of which continent?",
    ],
    ("continent", "zh"): ["{cz}在哪个大洲？", "{cz}位于哪里？", "{cz}属于哪个洲？", "{cz}是哪个大洲的国家？"],
    ("language", "en"): [
        "What language do people speak in {c}?",
        "What is the main language of {c}?",
        "Which language is spoken in {c}?",
        "What do people in {c} speak?",
    ],
    ("language", "zh"): ["{cz}人说什么语言？", "{cz}的主要语言是什么？", "在{cz}人们讲什么话？", "{cz}通用什么语言？"],
    ("legs", "en"): [
        "How many legs does {an} have?",
        "How many legs has {an} got?",
        "Count the legs of {an}.",
        "What is the number of legs on {an}?",
    ],
    ("legs", "zh"): ["{az}有几条腿？", "{az}有多少条腿？", "一{m}{az}有几条腿？", "{az}的腿有几条？"],
    ("food", "en"): [
        "What does {an} like to eat?",
        "What does {an} eat?",
        "What is the favourite food of {an}?",
        "What food does {an} like?",
    ],
    ("food", "zh"): ["{az}喜欢吃什么？", "{az}吃什么？", "{az}最爱的食物是什么？", "{az}平时吃什么东西？"],
    ("home", "en"): [
        "Where does {an} live?",
        "Where can you find {an}?",
        "What is the home of {an}?",
        "In what place does {an} live?",
    ],
    ("home", "zh"): ["{az}住在哪里？", "在哪里能找到{az}？", "{az}的家在哪儿？", "{az}生活在什么地方？"],
    ("sound", "en"): [
        "What sound does {an} make?",
        "What does {an} say?",
        "How does {an} sound?",
        "What noise does {an} make?",
    ],
    ("sound", "zh"): ["{az}怎么叫？", "{az}发出什么声音？", "{az}的叫声是什么样的？", "{az}是怎么叫的？"],
    ("color", "en"): [
        "What color is {t}?",
        "What colour is {t}?",
        "Tell me the color of {t}.",
        "Which color does {t} have?",
    ],
    ("color", "zh"): ["{tz}是什么颜色的？", "{tz}是什么颜色？", "请告诉我{tz}的颜色。", "{tz}的颜色是什么？"],
}

# (relation, language) -> phrasings of the fact sentence that opens a passage
RETRIEVAL_FACTS = {
    ("capital", "en"): [
        "{cap} is the capital of {c}.",
        "The capital of {c} is {cap}.",
        "The government of {c} sits in {cap}.",
    ],
    ("capital", "zh"): ["{capz}是{cz}的首都。", "{cz}的首都是{capz}。", "{cz}的政府设在{capz}。"],
    ("continent", "en"): ["{c} is a country in {cont}.", "{c} is in {cont}.", "{c} lies in {cont}."],
    ("continent", "zh"): ["{cz}是{contz}的一个国家。", "{cz}位于{contz}。", "{cz}地处{contz}。"],
    ("language", "en"): [
        "People in {c} speak {lang}.",
        "The main language of {c} is {lang}.",
        "Most people in {c} talk to each other in {lang}.",
    ],
    ("language", "zh"): [
        "{cz}人说{langz}。",
        "{cz}的主要语言是{langz}。",
        "在{cz}，人们说{langz}。",
        "{cz}人平时用{langz}交谈。",
    ],
    ("legs", "en"): ["{An} has {legs_en}.", "Every {a} has {legs_en}.", "{An} {legs_walk}."],
    ("legs", "zh"): ["{az}{legs_zh}。", "每{m}{az}都{legs_zh}。"],
    ("food", "en"): ["{An} likes to eat {food}.", "{An} eats {food}.", "Most of all, {an} enjoys {food}."],
    ("food", "zh"): ["{az}喜欢吃{foodz}。", "{az}爱吃{foodz}。", "{az}最爱{foodz}。"],
    ("home", "en"): ["{An} lives {on_home}.", "You can find {an} {on_home}.", "{An} makes its home {on_home}."],
    ("home", "zh"): ["{az}住在{homez}。", "{az}生活在{homez}。", "{az}的家在{homez}。"],
    ("sound", "en"): ["{An} {sound_en}.", "The {a} {sound_en}."],
    ("sound", "zh"): ["{az}{sndz}。", "{az}通常{sndz}。"],
    ("color", "en"): ["{T} is {col}.", "The color of {t} is {col}."],
    ("color", "zh"): ["{tz}是{colz}的。", "{tz}的颜色是{colz}。"],
}

# (group, language) -> (relation, sentence): sentences about a passage's entity that answer no question of the set.
# A sentence tagged with a relation shares the words of that relation's questions ("capital", "language", "legs",
# ...) without giving the answer, and goes only into passages of the entity's OTHER relations, so that word overlap
# alone does not find the passage that answers.
RETRIEVAL_FILLERS = {
    ("country", "en"): [
        (None, "{c} has a long history."),
        (None, "Many travellers visit {c}."),
        (None, "{c} is a beautiful country."),
        ("capital", "Many travellers visit {c} and its capital."),
        ("language", "Travellers to {c} often learn a few words of the local language."),
        ("continent", "Visitors from every continent come to {c}."),
    ],
    ("country", "zh"): [
        (None, "{cz}有悠久的历史。"),
        (None, "很多游客去{cz}旅行。"),
        (None, "{cz}是一个美丽的国家。"),
        ("capital", "很多游客去{cz}的首都旅行。"),
        ("language", "去{cz}旅行的人常常学几句当地的语言。"),
        ("continent", "每年都有来自各大洲的游客去{cz}。"),
    ],
    ("animal", "en"): [
        (None, "Children often draw pictures of {an}."),
        (None, "{An} is an interesting animal."),
        ("food", "Children like to watch {an} eat."),
        ("legs", "Children sometimes draw {an} with too many legs."),
        ("home", "Children often ask where {an} lives."),
        ("sound", "Children like to copy the sound of {an}."),
    ],
    ("animal", "zh"): [
        (None, "孩子们喜欢画{az}。"),
        (None, "{az}是一种有趣的动物。"),
        ("food", "孩子们喜欢看{az}吃东西。"),
        ("legs", "孩子们有时把{az}的腿画得太多。"),
        ("home", "孩子们常常问{az}住在哪里。"),
        ("sound", "孩子们喜欢学{az}的叫声。"),
    ],
}
# (relation, language) -> further sentences only for passages of that relation
RELATION_FILLERS = {
    ("capital", "en"): ["Many people visit {cap} every year.", "{cap} is a busy city."],
    ("capital", "zh"): ["每年都有很多人去{capz}旅游。", "{capz}是一座热闹的城市。"],
    ("color", "en"): ["Even small children know this."],
    ("color", "zh"): ["连小孩子都知道这一点。"],
}


def _fillers(group: str, relation: str, lang: str):
    tagged = RETRIEVAL_FILLERS.get((group, lang), [])
    return [text for tag, text in tagged if tag != relation] + RELATION_FILLERS.get((relation, lang), [])


# the relations of each group, in the order their fields are built below
COUNTRY_RELATIONS = ("capital", "continent", "language")
ANIMAL_RELATIONS = ("legs", "food", "home", "sound")


def _country_fields(row):
    c, cz, cap, capz, cont, contz, lang, langz = row
    return dict(c=c, cz=cz, cap=cap, capz=capz, cont=cont, contz=contz, lang=lang, langz=langz)


def _animal_fields(row):
    a, az, snd, sndz, legs, food, foodz, home, homez = row
    an = ("an " if a[0] in "aeiou" else "a ") + a
    return dict(
        a=a,
        an=an,
        An=an[0].upper() + an[1:],
        az=az,
        m=MEASURE_ZH.get(az, "只"),
        legs_en=f"{NUM_EN[legs]} legs" if legs else "no legs",
        legs_walk=f"walks on {NUM_EN[legs]} legs" if legs else "has no legs at all",
        legs_zh=f"有{NUM_ZH[legs] if legs != 2 else '两'}条腿" if legs else "没有腿",
        food=food,
        foodz=foodz,
        home=home,
        on_home=("on the " if home == "farm" else "in the ") + home,
        homez=homez,
        sound_en=f"says {snd}" if snd != "no sound" else "makes almost no sound",
        sndz=sndz,
    )


def _color_fields(row):
    t, tz, col, colz = row
    return dict(t=t, T=t[0].upper() + t[1:], tz=tz, col=col, colz=colz)


def _retrieval_entities():
    """[(group, name, fields, relations, similarity key per relation)] for every entity of the fact tables."""
    out = []
    for row in COUNTRIES:  # a similar country: the same continent
        out.append(
            ("country", row[0], _country_fields(row), COUNTRY_RELATIONS, dict.fromkeys(COUNTRY_RELATIONS, row[4]))
        )
    for row in ANIMALS:  # a similar animal: the same value of that relation (food, home, ...)
        out.append(
            (
                "animal",
                row[0],
                _animal_fields(row),
                ANIMAL_RELATIONS,
                dict(zip(ANIMAL_RELATIONS, (row[4], row[5], row[7], row[2]))),
            )
        )
    for row in COLORS:  # a similar thing: the same color
        out.append(("color", row[0], _color_fields(row), ("color",), {"color": row[2]}))
    return out


def _held_out(rng: random.Random, entities):
    """{entity name: language it is held out in}: 4+4 European and Asian countries, 1 of each other continent, 4
    animals, 4 colored things; alternately English and Chinese in table order."""
    chosen = []
    for cont, k in (
        ("Europe", 4),
        ("Asia", 4),
        ("Africa", 1),
        ("North America", 1),
        ("South America", 1),
        ("Oceania", 1),
    ):
        chosen += rng.sample([c[0] for c in COUNTRIES if c[4] == cont], k)
    chosen += rng.sample([a[0] for a in ANIMALS], 4) + rng.sample([t[0] for t in COLORS], 4)
    ordered = [e[1] for e in entities if e[1] in chosen]
    return {name: ("en", "zh")[i % 2] for i, name in enumerate(ordered)}


def retrieval_rows(rng: random.Random):
    """(train rows, eval rows); see the module docstring."""
    entities = _retrieval_entities()
    held = _held_out(rng, entities)
    passages = {}  # (name, relation, lang) -> passage
    for group, name, fields, relations, _keys in entities:
        for rel in relations:
            for lang in ("en", "zh"):
                fillers = _fillers(group, rel, lang)
                low, high = (1, 2) if len(fillers) > 1 else (0, len(fillers))  # colors: 0-1 filler
                extra = rng.sample(fillers, rng.randint(low, high))
                text = " " if lang == "en" else ""
                passages[name, rel, lang] = text.join(
                    [rng.choice(RETRIEVAL_FACTS[rel, lang]).format(**fields)] + [f.format(**fields) for f in extra]
                )
    assert len(set(passages.values())) == len(passages), "two facts got the same passage"

    train, evaluation = [], []
    for group, name, fields, relations, keys in entities:
        for lang in ("en", "zh"):
            if name in held and held[name] != lang:
                continue  # held out in the other language: not used at all
            for rel in relations:
                *seen, unseen = RETRIEVAL_QUERIES[rel, lang]
                pos = passages[name, rel, lang]
                if name in held:
                    for template in (rng.choice(seen), unseen):
                        evaluation.append({"query": template.format(**fields), "pos": pos})
                    continue
                # training: hard negatives among the other training entities of the group, same language
                others = [e for e in entities if e[0] == group and e[1] != name and e[1] not in held]
                similar = [e for e in others if e[4][rel] == keys[rel]] or others
                for template in rng.sample(seen, 1 if group == "animal" else 2):
                    first = rng.choice(similar)
                    negs = [passages[first[1], rel, lang]]
                    other_rels = [r for r in relations if r != rel]
                    if other_rels:
                        negs.append(passages[name, rng.choice(other_rels), lang])
                    third = rng.choice([e for e in others if e is not first])
                    negs.append(passages[third[1], rel, lang])
                    negs = negs[: rng.randint(1, 3)]
                    rng.shuffle(negs)
                    assert pos not in negs
                    train.append({"query": template.format(**fields), "pos": pos, "neg": negs})
    rng.shuffle(train)
    rng.shuffle(evaluation)
    assert not {r["query"] for r in train} & {r["query"] for r in evaluation}
    assert not {r["pos"] for r in evaluation} & {p for r in train for p in [r["pos"], *r["neg"]]}
    return train, evaluation


def write_docs(path: Path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(d.strip() for d in docs) + "\n", encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    en, zh = build_corpus(rng)
    write_docs(HERE / "corpus" / "en.txt", en)
    write_docs(HERE / "corpus" / "zh.txt", zh)
    with (HERE / "chat_sft.jsonl").open("w", encoding="utf-8") as f:
        for chat in sft_chats(rng):
            f.write(json.dumps(chat, ensure_ascii=False) + "\n")
    for name, n in (("sentiment_train.csv", 320), ("sentiment_eval.csv", 80)):
        with (HERE / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(sentiment_rows(rng, n))
    train, evaluation = retrieval_rows(random.Random(RETRIEVAL_SEED))
    for name, rows in (("retrieval_train.jsonl", train), ("retrieval_eval.jsonl", evaluation)):
        with (HERE / name).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for p in sorted(HERE.rglob("*")):
        if p.is_file() and p.suffix in (".txt", ".jsonl", ".csv"):
            print(f"{p.relative_to(HERE)}: {p.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
